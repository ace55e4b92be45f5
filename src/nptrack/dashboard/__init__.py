"""Live dashboard (pyqtgraph, the [gui] extra): counts, sizes, trajectories, pipeline health.

`DashboardState` (no Qt) holds what is shown; `DashboardWindow` draws it; `run_dashboard`
attaches to a running pipeline or a stored session, or renders one screenshot offscreen.
"""

from nptrack.dashboard.state import DashboardState, FrameStats, treacy_rice_fit

__all__ = ["DashboardState", "FrameStats", "treacy_rice_fit"]
