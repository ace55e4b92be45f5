"""Science outputs of a session: statistics (`stats`) and figures / reports (`report`).

`stats` holds pure numpy / scipy functions on the columns of the session tables (size
distributions, Treacy-Rice, ripening kinetics, mobility, lineages); everything in its
``__all__`` is re-exported here.
"""

from nptrack.analysis import stats
from nptrack.analysis.stats import *  # noqa: F403

__all__ = list(stats.__all__)
