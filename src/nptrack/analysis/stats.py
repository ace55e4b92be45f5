"""The science of a session as pure functions on the columns of its tables.

Inputs are the columns of DESIGN.md's tables: detections / tracks (frame, track_id, x, y in
pixels of frame 0, diameter_nm, intensity) and events (frame, type, track_ids, detail). Every
fit returns its number of points, so that error bars are honest; too few points give NaN fits,
never exceptions. Units: nm, nm², nm³, s; intensities in the detector's integrated units.

Sections: size distributions per frame; Treacy-Rice (I^(1/3) ∝ D: chemical homogeneity);
ripening kinetics (R̄ⁿ(t) − R̄ⁿ(0) = K·t, n = 3 volume-diffusion control, n = 2 interface
control); mobility (MSD, diffusion coefficients with localisation error, D vs size, Brownian
check); lineages (track lengths, fusion counts, coalescence share of growth).
"""

from __future__ import annotations

from nptrack.analysis.fits import (
    DiffusionFit,
    KineticsFit,
    LinearFit,
    PowerLawFit,
    fit_line,
    sphere_volume_nm3,
)
from nptrack.analysis.kinetics import ripening_fit, ripening_free_exponent
from nptrack.analysis.lineage import coalescence_share, fusion_counts, track_lengths
from nptrack.analysis.mobility import (
    brownian_check,
    diffusion_coefficients,
    mean_squared_displacement,
    mobility_vs_size,
)
from nptrack.analysis.sizes import (
    frame_size_stats,
    mean_radius_series,
    size_histogram,
    treacy_rice,
    treacy_rice_per_frame,
)

__all__ = [
    "DiffusionFit",
    "KineticsFit",
    "LinearFit",
    "PowerLawFit",
    "brownian_check",
    "coalescence_share",
    "diffusion_coefficients",
    "fit_line",
    "frame_size_stats",
    "fusion_counts",
    "mean_radius_series",
    "mean_squared_displacement",
    "mobility_vs_size",
    "ripening_fit",
    "ripening_free_exponent",
    "size_histogram",
    "sphere_volume_nm3",
    "track_lengths",
    "treacy_rice",
    "treacy_rice_per_frame",
]
