"""NP-Tracker: physics-aware global tracking of supported nanoparticles (CEM).

Continuous Energy Minimisation (Milan, Roth & Schindler, TPAMI 2014) adapted to nanoparticles
as in Faraz et al. (Sci. Rep. 2022): Brownian dynamics scaled by particle size, mass
conservation through integrated intensity, fusions and crossings of particles on two surfaces.

- `track_detections`: global tracking of a whole series → tracks table + events.
- `OnlineTracker`: sliding window with bounded latency (commit frame t − L at frame t).
- `optimize`, `initial_solution`, `energy`: the building blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from nptrack.config import TrackConfig
from nptrack.track.cem import Progress, optimize, params_from_config
from nptrack.track.energy import Detections, EnergyParams, Fusion, Solution, Track, energy
from nptrack.track.events import Event, TrackTable, find_events, infer_fusions, solution_to_table
from nptrack.track.initial import initial_solution
from nptrack.track.smooth import smooth_solution, written_output
from nptrack.track.window import Commit, OnlineTracker

__all__ = [
    "Commit",
    "Detections",
    "EnergyParams",
    "Event",
    "Fusion",
    "OnlineTracker",
    "Progress",
    "Solution",
    "Track",
    "TrackResult",
    "TrackTable",
    "energy",
    "find_events",
    "infer_fusions",
    "initial_solution",
    "optimize",
    "params_from_config",
    "smooth_solution",
    "solution_to_table",
    "track_detections",
]


@dataclass(frozen=True)
class TrackResult:
    """Output of `track_detections`: tracks.csv rows, events.csv rows, and the state behind."""

    tracks: TrackTable
    events: list[Event]
    solution: Solution
    params: EnergyParams


def track_detections(
    detections: Detections,
    *,
    config: TrackConfig | None = None,
    params: EnergyParams | None = None,
    init: Solution | None = None,
    progress: Progress | None = None,
) -> TrackResult:
    """Track a whole series globally (gated Hungarian start, then CEM).

    Parameters
    ----------
    detections : Detections
        Every detection of the series (`Detections.from_arrays`).
    config : TrackConfig, optional
        Defaults when None.
    params : EnergyParams, optional
        Fixed energy parameters (else measured on `detections`).
    init : Solution, optional
        Warm start, e.g. the online solution.
    progress : Progress, optional
        A status line every few seconds while the CEM runs (long series).

    Returns
    -------
    TrackResult
        Track ids are renumbered 0, 1, ... by first frame. With ``smooth_positions`` (the
        default) the table's positions are `smooth_solution`'s; `solution` keeps CEM's.
    """
    cfg = config or TrackConfig()
    p = params or params_from_config(cfg, detections)
    sol = optimize(detections, config=cfg, params=p, init=init, progress=progress)
    table, events = written_output(sol, detections, p, smooth=cfg.smooth_positions)
    return TrackResult(table, events, sol, p)
