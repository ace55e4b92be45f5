"""Affine registration of a series to its first frame (Faraz et al. 2022).

`register` aligns one frame to a reference (phase correlation, then a pyramid of ECC);
`Registrar` carries the state of a live series (anchor, previous transform, fallback);
`map_points` and `warp_to_reference` bring detections and images into frame-0 coordinates.
"""

from nptrack.register.affine import (
    MODELS,
    Registration,
    phase_correlation,
    register,
    support_mask,
)
from nptrack.register.incremental import (
    FRAMES_COLUMNS,
    FrameRegistration,
    Registrar,
    frames_rows,
    register_series,
)
from nptrack.register.pyramid import Pyramid, build_pyramid
from nptrack.register.warp import (
    compose,
    decompose,
    field_rms,
    identity,
    invert,
    map_points,
    warp_to_reference,
)

__all__ = [
    "FRAMES_COLUMNS",
    "MODELS",
    "FrameRegistration",
    "Pyramid",
    "Registrar",
    "Registration",
    "build_pyramid",
    "compose",
    "decompose",
    "field_rms",
    "frames_rows",
    "identity",
    "invert",
    "map_points",
    "phase_correlation",
    "register",
    "register_series",
    "support_mask",
    "warp_to_reference",
]
