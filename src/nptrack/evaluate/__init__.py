"""Scores: tracking (CLEAR-MOT, IDF1, fusion events)."""

from nptrack.evaluate.mot import (
    evaluate,
    evaluate_fusions,
    evaluate_tracks,
    read_events_csv,
    read_table_csv,
)

__all__ = ["evaluate", "evaluate_fusions", "evaluate_tracks", "read_events_csv", "read_table_csv"]
