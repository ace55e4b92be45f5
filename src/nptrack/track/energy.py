"""NP-Tracker state (a set of trajectories) and its energy, with analytic gradients.

The state follows Milan, Roth & Schindler (TPAMI 2014): every trajectory holds a position for
each frame of its life (px of frame 0, interpolated where nothing was detected). Faraz et al.
(Sci. Rep. 2022) add the integrated intensity, which is proportional to the mass of a particle in
ADF-STEM; here every trajectory point also carries ``u = log(intensity)`` so that intensity is
smoothed and conserved at fusions like positions are smoothed by the dynamics.

Energy ``E = Σ_k w_k E_k`` (weights from `nptrack.config.TrackConfig`):

- ``E_det`` (Milan's detection term, extended to intensity):
  ``Σ_p [λ − Σ_g c_g / (1 + ‖x_p − d_g‖²/s² + (ũ_p − v_g)²/ε_d²)]`` with ``v_g`` the
  log-intensity of detection g and ``ũ_p = u_p``, or ``log(e^u_p + e^u_q)`` while p is superposed
  with a crossing particle q on the other surface (one blob holds the mass of both; each of
  the two then gets half of the blob's gain, so a blob is never counted twice).
- ``E_dyn``: Brownian steps ``‖x^{t+1} − x^t‖² / (2σ²(d))``, ``σ² ∝ d^mobility_exponent``; or
  Milan's constant velocity ``‖x^{t−1} − 2x^t + x^{t+1}‖² / (2σ²)``. A fusion child's first
  step starts from the mass-weighted centre of its parents.
- ``E_int``: ``(u^{t−1} − 2u^t + u^{t+1})² / (2ε_s²) + (u^{t+1} − u^t)² / (2ε_1(d)²)`` along
  a track (a steady trend, as in Ostwald ripening, is cheap, the faster the smaller the
  particle, ε_1 ∝ d⁻³; a jump is not), and at a fusion
  ``(u_child − log Σ_k e^{u_parent_k})² / (2ε_m²)``: the parents' masses add up to the child's.
- ``E_exc``: ``(1 − ‖x_p − x_q‖²/r_pq²)²`` for two particles closer than their contact distance
  ``r_pq``, except superposed pairs (a crossing on two surfaces) and fusing parents.
- ``E_per``: a start or end inside the field costs ``1 − exp(−b²/b0²)`` (b: distance to the
  border), scaled down for small particles (births, vanishing); sequence ends and fusions are free.
- ``E_reg``: ``Σ_i (1 + 1/length_i)`` (a fusion child is not counted as a new track); each
  fusion link costs `fusion_cost` (added to the persistence term).

Everything is evaluated on a `Packed` problem: a flat, vectorised copy of some tracks in which the
"focus" tracks carry all their terms and the others are context (exclusion partners, crossing
partners, fusion partners). The energy of the focus tracks given the rest is what jump moves
compare; the whole solution packed as focus is the global energy minimised by conjugate gradient.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

__all__ = [
    "FRAME_SEP",
    "Detections",
    "EnergyParams",
    "Fusion",
    "Packed",
    "Solution",
    "Track",
    "endpoint_energy",
    "energy",
    "field_border",
    "group_median",
    "out_of_view",
    "pack",
]

FRAME_SEP = 1.0e5  # px: frames are stacked this far apart in 3-D trees so neighbours stay in-frame
_TERMS = ("detection", "dynamics", "intensity", "exclusion", "persistence", "regularisation")


@dataclass(frozen=True, eq=False)
class Detections:
    """Per-frame detections, sorted by frame (build with `Detections.from_arrays`).

    Attributes
    ----------
    frame : ndarray of int, shape (N,)
    xy : ndarray of float, shape (N, 2)
        (x, y) in px of frame 0 (x = column, y = row).
    diameter_nm, intensity, score : ndarray of float, shape (N,)
        Equivalent diameter (nm), integrated intensity (counts) and detection score in [0, 1].
    det_id : ndarray of int, shape (N,)
        Identifier written to tracks.csv.
    pixel_size_nm : float
    frame_shape : (height, width) in px, or None when the field is unknown.
    n_frames : int
    fields : ndarray, shape (n_frames, 2, 3), optional
        Where the microscope looked in each frame: the affine map from that frame's pixels to
        frame-0 pixels (``x0 = a11 x + a12 y + tx``, ``y0 = a21 x + a22 y + ty``, as the
        registration measures it). The field of frame t is its ``frame_shape`` rectangle
        mapped by ``fields[t]``; without it every frame sees frame 0's field.
    """

    frame: NDArray[np.int64]
    xy: NDArray[np.float64]
    diameter_nm: NDArray[np.float64]
    intensity: NDArray[np.float64]
    score: NDArray[np.float64]
    det_id: NDArray[np.int64]
    pixel_size_nm: float
    frame_shape: tuple[int, int] | None
    n_frames: int
    fields: NDArray[np.float64] | None = None

    @classmethod
    def from_arrays(
        cls,
        frame: ArrayLike,
        x: ArrayLike,
        y: ArrayLike,
        *,
        diameter_nm: ArrayLike,
        intensity: ArrayLike,
        pixel_size_nm: float,
        score: ArrayLike | None = None,
        det_id: ArrayLike | None = None,
        frame_shape: tuple[int, int] | None = None,
        n_frames: int | None = None,
        fields: ArrayLike | None = None,
    ) -> Detections:
        """Detections from column arrays (any order); missing scores are 1, ids are row numbers."""
        f = np.asarray(frame, dtype=np.int64).ravel()
        n = f.size
        order = np.argsort(f, kind="stable")

        def col(a: ArrayLike | None, fill: float) -> NDArray[np.float64]:
            v = np.full(n, fill) if a is None else np.asarray(a, dtype=float).ravel()
            if v.size != n:
                raise ValueError("detection columns must all have the same length")
            return v[order]

        ids = np.arange(n) if det_id is None else np.asarray(det_id, dtype=np.int64).ravel()
        if pixel_size_nm is None or not pixel_size_nm > 0:
            raise ValueError(f"pixel_size_nm must be positive, got {pixel_size_nm}")
        nf = int(f.max()) + 1 if n else 0
        return cls(
            frame=f[order],
            xy=np.column_stack([col(x, 0), col(y, 0)]),
            diameter_nm=col(diameter_nm, 1.0),
            intensity=col(intensity, 1.0),
            score=np.clip(col(score, 1.0), 0.0, 1.0),
            det_id=ids[order],
            pixel_size_nm=float(pixel_size_nm),
            frame_shape=None if frame_shape is None else (int(frame_shape[0]), int(frame_shape[1])),
            n_frames=max(nf, int(n_frames or 0)),
            fields=None if fields is None else np.asarray(fields, dtype=float).reshape(-1, 2, 3),
        )

    def __len__(self) -> int:
        return int(self.frame.size)

    @cached_property
    def offsets(self) -> NDArray[np.int64]:
        """Rows of frame t are ``offsets[t]:offsets[t + 1]``."""
        return np.searchsorted(self.frame, np.arange(self.n_frames + 1)).astype(np.int64)

    @cached_property
    def log_intensity(self) -> NDArray[np.float64]:
        """log intensity, floored so that a blank detection cannot give −inf."""
        pos = self.intensity[self.intensity > 0]
        floor = 1e-3 * float(np.median(pos)) if pos.size else 1e-6
        return np.log(np.maximum(self.intensity, floor))

    @cached_property
    def tree(self) -> cKDTree:
        """3-D tree over (x, y, frame·FRAME_SEP): neighbour queries never cross frames."""
        return cKDTree(np.column_stack([self.xy, self.frame * FRAME_SEP]))

    @cached_property
    def _field_inverse(self) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        if self.fields is None or not len(self.fields):
            return None
        return np.linalg.inv(self.fields[:, :, :2]), self.fields[:, :, 2].copy()

    def field_border(
        self, xy: ArrayLike, frames: ArrayLike, shape: tuple[int, int] | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Signed distance (px) of frame-0 points to the edge of the field seen in `frames`.

        Positive inside the field, negative outside (a particle there is out of view; the
        field's edges are the centres of its outer pixels). Also returns, per point, the
        gradient of that distance with respect to (x, y), shape (N, 2). `shape` stands in
        for a missing `frame_shape`; infinite without either.
        """
        return field_border(xy, frames, self.fields, self.frame_shape or shape, self._field_inverse)

    def in_view(self, xy: ArrayLike, frames: ArrayLike) -> NDArray[np.bool_]:
        """Whether frame-0 points lie in the field seen in `frames` (half a pixel margin)."""
        if self.frame_shape is None:
            return np.ones(np.shape(xy)[0], bool)
        if self.fields is None:  # frame 0's field for every frame
            h, w = self.frame_shape
            q = np.asarray(xy, dtype=float)
            return (
                (q[:, 0] >= -0.5) & (q[:, 1] >= -0.5) & (q[:, 0] <= w - 0.5) & (q[:, 1] <= h - 0.5)
            )
        return self.field_border(xy, frames)[0] >= -0.5

    def rows(self, t: int) -> slice:
        """Slice of the rows in frame `t`."""
        if t < 0 or t >= self.n_frames:
            return slice(0, 0)
        return slice(int(self.offsets[t]), int(self.offsets[t + 1]))


def field_border(
    xy: ArrayLike,
    frames: ArrayLike,
    fields: NDArray[np.float64] | None,
    shape: tuple[int, int] | None,
    inverse: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Signed distance (px) of frame-0 points to the edge of the field of `frames`, and its
    gradient w.r.t. (x, y) (see `Detections.field_border`; `fields` as in `Detections`)."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    n = xy.shape[0]
    if shape is None:
        return np.full(n, np.inf), np.zeros((n, 2))
    h, w = shape
    if inverse is None and fields is not None and len(fields):
        inverse = np.linalg.inv(fields[:, :, :2]), fields[:, :, 2]
    if inverse is None:
        q = xy
        jac = np.broadcast_to(np.eye(2), (n, 2, 2))
    else:
        f = np.clip(np.asarray(frames, dtype=np.int64).reshape(-1), 0, len(inverse[0]) - 1)
        jac = inverse[0][f]
        q = np.einsum("nij,nj->ni", jac, xy - inverse[1][f])
    cand = np.column_stack([q[:, 0], q[:, 1], w - 1 - q[:, 0], h - 1 - q[:, 1]])
    j = np.argmin(cand, axis=1)
    sign = np.where(j < 2, 1.0, -1.0)[:, None]
    return cand[np.arange(n), j], sign * jac[np.arange(n), j % 2]


@dataclass(eq=False, slots=True)
class Track:
    """One trajectory: a point per frame from `start` on.

    ``xy`` (n, 2) px, ``u`` (n,) log intensity, ``det`` (n,) the detection row explaining each
    point (index into `Detections`) or −1 where the track is interpolated.
    """

    id: int
    start: int
    xy: NDArray[np.float64]
    u: NDArray[np.float64]
    det: NDArray[np.int64]

    @property
    def n(self) -> int:
        return self.u.size

    @property
    def end(self) -> int:
        """Last frame (inclusive)."""
        return self.start + self.u.size - 1

    def copy(self, *, id: int | None = None) -> Track:
        return Track(
            self.id if id is None else id,
            self.start,
            self.xy.copy(),
            self.u.copy(),
            self.det.copy(),
        )

    def cut(self, t0: int, t1: int, *, id: int | None = None) -> Track:
        """The part of the track in frames ``[t0, t1]`` (clipped), as a new track."""
        a, b = max(t0, self.start) - self.start, min(t1, self.end) - self.start + 1
        return Track(
            self.id if id is None else id,
            self.start + a,
            self.xy[a:b].copy(),
            self.u[a:b].copy(),
            self.det[a:b].copy(),
        )


@dataclass(frozen=True)
class Fusion:
    """Parents (two or more) end in frame ``child.start − 1``; the child starts with their mass."""

    parents: tuple[int, ...]
    child: int


@dataclass(eq=False)
class Solution:
    """A set of tracks with their fusion links over frames ``[first_frame, last_frame]``.

    Frames ``≤ frozen_until`` are committed: no move may change a point there.
    """

    tracks: dict[int, Track] = field(default_factory=dict)
    fusions: dict[int, Fusion] = field(default_factory=dict)  # keyed by child id
    first_frame: int = 0
    last_frame: int = 0
    frozen_until: int = -1
    next_id: int = 0

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def copy(self) -> Solution:
        """Deep copy of tracks (positions are changed in place by the optimiser)."""
        return replace(
            self, tracks={k: t.copy() for k, t in self.tracks.items()}, fusions=dict(self.fusions)
        )

    def parent_of(self) -> dict[int, int]:
        """Parent track id → child track id."""
        return {p: f.child for f in self.fusions.values() for p in f.parents}


@dataclass(frozen=True)
class EnergyParams:
    """Weights and scales of the energy (px, frames, natural log of intensity).

    `nptrack.track.initial.estimate_params` fills the scales from the data: step_sigma_px from
    the mean squared displacement of confident links, detection_scale_px from the localisation
    noise, intensity tolerances from the frame-to-frame scatter of linked intensities.
    """

    weight_detection: float = 2.0
    weight_dynamics: float = 0.5
    weight_intensity: float = 0.25
    weight_exclusion: float = 2.0
    weight_persistence: float = 0.5
    weight_regularisation: float = 0.5
    motion: Literal["brownian", "constant_velocity"] = "brownian"
    pixel_size_nm: float = 1.0
    frame_shape: tuple[int, int] | None = None
    detection_lambda: float = 0.1  # Milan's λ: price of a point that explains no detection
    detection_scale_px: float = 1.0  # s, about 2.5 localisation_px
    localisation_px: float = 0.4  # σ of a detection's position error per axis
    intensity_tolerance: float = 0.25  # ε_d, log units, in E_det, at reference_diameter_nm
    # below reference_diameter_nm ε_d ∝ diameter^k (`intensity_tol`): a small particle's
    # integrated intensity is the noisier (a background error over its area against a mass
    # ∝ d³); on the U-Net chain k ≈ −2, on detections with a fixed relative noise 0
    intensity_noise_exponent: float = 0.0
    intensity_smoothness: float = 0.1  # ε_s, log units per frame² (second differences)
    # ε_1: how fast a particle's log mass may drift per frame at reference_diameter_nm (Ostwald
    # ripening); it scales as d⁻³ (a volume flux acts on log volume as 1/V): small particles
    # shrink and vanish quickly, a big one whose mass drops by a third is a split, not ripening.
    intensity_drift: float = 0.03
    mass_tolerance: float = 0.15  # ε_m, log units at a fusion
    step_sigma_px: float = 1.5  # Brownian σ per axis per frame at reference_diameter_nm
    reference_diameter_nm: float = 3.0
    mobility_exponent: float = -2.0
    max_step_px: float = 12.0
    # E_dyn normalises steps by (dynamics_tolerance·σ)²: a typical Brownian step then costs
    # 1/tolerance² of a detection's gain, so that a true track pays for itself, while a jump
    # of 5σ still costs several detections.
    dynamics_tolerance: float = 2.0
    # A fusion is a rare event: its link costs this much (persistence units), so a crossing or
    # two particles merely touching for a while are not explained by a fusion and a new birth.
    fusion_cost: float = 1.0
    contact_factor: float = 0.7  # overlap below contact_factor·(d_p + d_q)/2 is excluded
    border_margin_px: float = 6.0  # b0 of the persistence term
    small_diameter_nm: float = 1.0  # births and vanishing are free below about this size
    max_gap_frames: int = 5

    @property
    def detection_radius_px(self) -> float:
        """Detections further than this do not attract a point (kernel < 1/17 of its peak)."""
        return 4.0 * self.detection_scale_px

    def step_var(self, diameter_nm: ArrayLike) -> NDArray[np.float64]:
        """Brownian step variance per axis (px²/frame) for particles of `diameter_nm`."""
        d = np.maximum(np.asarray(diameter_nm, dtype=float), 0.05 * self.reference_diameter_nm)
        var = self.step_sigma_px**2 * (d / self.reference_diameter_nm) ** self.mobility_exponent
        return np.clip(var, 0.01, (self.max_step_px / 3.0) ** 2)

    def intensity_tol(self, diameter_nm: ArrayLike) -> NDArray[np.float64]:
        """ε_d (log units) of a detection or track of `diameter_nm`.

        ``intensity_tolerance · (d / reference_diameter_nm)^intensity_noise_exponent`` for
        particles smaller than the reference, ``intensity_tolerance`` for larger ones: their
        measured mass is steadier, but what then breaks it (a touching neighbour, a partial
        mask) is not noise that shrinks with size.
        """
        d = np.maximum(np.asarray(diameter_nm, dtype=float), 0.05 * self.reference_diameter_nm)
        scale = (np.minimum(d / self.reference_diameter_nm, 1.0)) ** self.intensity_noise_exponent
        return np.minimum(self.intensity_tolerance * scale, 1.0)

    def drift_k(self, diameter_nm: ArrayLike) -> NDArray[np.float64]:
        """1 / (2 ε_1²) of the first-difference intensity term for particles of `diameter_nm`."""
        d = np.maximum(np.asarray(diameter_nm, dtype=float), 0.05 * self.reference_diameter_nm)
        eps = np.clip(self.intensity_drift * (self.reference_diameter_nm / d) ** 3, 0.005, 1.0)
        return 0.5 / eps**2

    def contact_px(self, d1: ArrayLike, d2: ArrayLike) -> NDArray[np.float64]:
        """Distance (px) below which two particles overlap (exclusion radius)."""
        d = np.asarray(d1, dtype=float) + np.asarray(d2, dtype=float)
        return np.maximum(self.contact_factor * 0.5 * d / self.pixel_size_nm, 0.5)

    def size_factor(self, diameter_nm: ArrayLike) -> NDArray[np.float64]:
        """≈0 for particles small enough to be born or vanish anywhere, ≈1 for the others."""
        d = np.asarray(diameter_nm, dtype=float)
        w = 0.15 * self.small_diameter_nm
        return 1.0 / (1.0 + np.exp(-(d - self.small_diameter_nm) / w))


def out_of_view(
    t: Track, dets: Detections, params: EnergyParams | None, diameter_nm: float
) -> NDArray[np.bool_]:
    """Interpolated points of t that were more likely out of view than missed.

    A detector misses a particle in view rarely; a particle near the edge of the field steps
    out of it easily. Between two detections the particle's position is uncertain by the
    Brownian bridge, σ² = σ_step²(d)·k(n − k)/n + σ_loc² at the k-th of n steps (or σ_step²·k
    past the last detection); a point closer than 2σ to the edge of the field seen in its
    frame (`Detections.field_border`) is taken as out of view (its probability of being in
    view is below ~98 %: less than a miss explains). Without `params`, only points outside
    the field.
    """
    miss = t.det < 0
    out = np.zeros(t.n, bool)
    if not miss.any() or dets.frame_shape is None:
        return out
    idx = np.flatnonzero(miss)
    b = dets.field_border(t.xy[idx], t.start + idx)[0]
    if params is None:
        out[idx] = b < -0.5
        return out
    obs = np.flatnonzero(~miss)
    if not obs.size:
        obs = np.array([-1])  # no detection at all: uncertain from its first point on
    prev = np.searchsorted(obs, idx) - 1
    k = np.where(prev >= 0, idx - obs[np.maximum(prev, 0)], idx + 1).astype(float)
    nxt = prev + 1
    has_next = nxt < obs.size
    n = np.where(has_next, obs[np.minimum(nxt, obs.size - 1)] - idx + k, np.inf)
    frac = np.where(has_next, k * (n - k) / np.where(has_next, n, 1.0), k)
    var = float(params.step_var(diameter_nm)) * frac + params.localisation_px**2
    out[idx] = b < 2.0 * np.sqrt(var)
    return out


def group_median(
    values: NDArray[np.float64], groups: NDArray[np.int64], n: int
) -> NDArray[np.float64]:
    """Median of `values` per group 0..n−1 (NaN for an empty group), without a Python loop."""
    out = np.full(n, np.nan)
    if not values.size:
        return out
    order = np.lexsort((values, groups))
    g, v = groups[order], values[order]
    first = np.searchsorted(g, np.arange(n), side="left")
    count = np.bincount(g, minlength=n)
    ok = count > 0
    lo = first[ok] + (count[ok] - 1) // 2
    hi = first[ok] + count[ok] // 2
    out[ok] = 0.5 * (v[lo] + v[hi])
    return out


@dataclass(eq=False)
class Packed:
    """A vectorised energy problem (see `pack`). Index arrays refer to the packed points."""

    params: EnergyParams
    dets: Detections
    t: NDArray[np.int64]
    xy: NDArray[np.float64]
    u: NDArray[np.float64]
    tix: NDArray[np.int64]  # track index (position in the list given to `pack`)
    free: NDArray[np.bool_]  # variables of the optimiser
    starts: NDArray[np.int64]  # first point of each packed track
    det_p: NDArray[np.int64]  # E_det instances: point, detection row
    det_g: NDArray[np.int64]
    det_e2: NDArray[np.float64]  # ε_d² of each instance's detection
    partner: NDArray[np.int64]  # superposed partner of each point or −1
    sup_w: NDArray[np.float64]  # its share of the pair's mass (fixed during a CG run)
    n_lambda: int  # points whose λ is counted
    steps: NDArray[np.int64]  # (S, 2) consecutive points of focus tracks
    step_k: NDArray[np.float64]  # 1 / (2σ²) per step
    drift_k: NDArray[np.float64]  # 1 / (2ε_1²) per step
    triples: NDArray[np.int64]  # (T, 3) for constant velocity
    triple_k: NDArray[np.float64]
    fus_child: NDArray[np.int64]  # (F,) first point of each child
    fus_parent: NDArray[np.int64]  # (K,) last point of each parent
    fus_group: NDArray[np.int64]  # (K,) fusion index of each parent
    fus_w: NDArray[np.float64]  # (K,) mass weights (fixed during a CG run)
    fus_k: NDArray[np.float64]  # (F,) 1 / (2σ²) of the child's first step
    exc: NDArray[np.int64]  # (E, 2) candidate overlapping pairs
    exc_r2: NDArray[np.float64]
    per_p: NDArray[np.int64]  # starts / ends paying persistence
    per_a: NDArray[np.float64]
    reg: float
    n_fusions: int = 0

    def energy(
        self,
        xy: NDArray[np.float64] | None = None,
        u: NDArray[np.float64] | None = None,
        *,
        grad: bool = True,
    ) -> tuple[float, NDArray[np.float64], NDArray[np.float64], dict[str, float]]:
        """Energy, its gradient w.r.t. (xy, u) (zeros unless `grad`), and each weighted term."""
        p = self.params
        xy = self.xy if xy is None else xy
        u = self.u if u is None else u
        gxy = np.zeros_like(xy)
        gu = np.zeros_like(u)
        # np.add.at is slow: bincount where a point may recur, plain indexing where the
        # indices are distinct (consecutive points of steps and triples)
        add = _scatter_add if grad else _skip
        put = _distinct_add if grad else _skip
        terms = dict.fromkeys(_TERMS, 0.0)

        # detection: Lorentzian in position and log intensity
        w = p.weight_detection
        terms["detection"] = w * p.detection_lambda * self.n_lambda
        if w and self.det_p.size:
            q = self.partner
            has = q >= 0
            ut, dut, xt = u, np.ones_like(u), xy
            if has.any():  # superposed: the blob holds the mass of both
                ut = u.copy()
                ut[has] = np.logaddexp(u[has], u[q[has]])
                dut[has] = np.exp(u[has] - ut[has])
                # ... and its centroid is their mass-weighted centre, not each one's position
                xt = xy.copy()
                sw = self.sup_w[has, None]
                xt[has] = sw * xy[has] + (1.0 - sw) * xy[q[has]]
            dp, dg = self.det_p, self.det_g
            dx = xt[dp] - self.dets.xy[dg]
            du = ut[dp] - self.dets.log_intensity[dg]
            s2, e2 = p.detection_scale_px**2, self.det_e2
            den = 1.0 + (dx * dx).sum(1) / s2 + du * du / e2
            # a blob shared by two superposed particles is one detection: half the gain each
            c = self.dets.score[dg] * np.where(has[dp], 0.5, 1.0)
            terms["detection"] -= w * float((c / den).sum())
            if grad:
                k = w * c / den**2
                gx = (2.0 * k / s2)[:, None] * dx
                if has.any():
                    hp = has[dp]
                    sw = self.sup_w[dp][:, None]
                    add(gxy, dp, np.where(hp[:, None], sw * gx, gx))
                    add(gxy, q[dp[hp]], (1.0 - sw[hp]) * gx[hp])
                else:
                    add(gxy, dp, gx)
                gut = np.bincount(dp, 2.0 * k * du / e2, minlength=u.size)
                gu += gut * dut
                if has.any():
                    add(gu, q[has], gut[has] * (1.0 - dut[has]))

        # dynamics: Brownian steps (or constant velocity) + fusion children's first step
        w = p.weight_dynamics
        if w:
            e = 0.0
            if p.motion == "constant_velocity" and self.triples.size:
                a, b, c3 = self.triples.T
                acc = xy[a] - 2.0 * xy[b] + xy[c3]
                k = self.triple_k[:, None]
                e += float((k * acc * acc).sum())
                g = 2.0 * w * k * acc
                put(gxy, a, g)
                put(gxy, b, -2.0 * g)
                put(gxy, c3, g)
            elif p.motion == "brownian" and self.steps.size:
                a, b = self.steps.T
                d = xy[b] - xy[a]
                k = self.step_k[:, None]
                e += float((k * d * d).sum())
                g = 2.0 * w * k * d
                put(gxy, b, g)
                put(gxy, a, -g)
            if self.fus_child.size:
                centre = np.zeros((self.fus_child.size, 2))
                np.add.at(centre, self.fus_group, self.fus_w[:, None] * xy[self.fus_parent])
                d = xy[self.fus_child] - centre
                k = self.fus_k[:, None]
                e += float((k * d * d).sum())
                g = 2.0 * w * k * d
                add(gxy, self.fus_child, g)
                add(gxy, self.fus_parent, -self.fus_w[:, None] * g[self.fus_group])
            terms["dynamics"] = w * e

        # intensity: smooth along tracks, conserved at fusions
        w = p.weight_intensity
        if w:
            e = 0.0
            if self.steps.size:
                a, b = self.steps.T
                d = u[b] - u[a]
                e += float((self.drift_k * d * d).sum())
                put(gu, b, 2.0 * w * self.drift_k * d)
                put(gu, a, -2.0 * w * self.drift_k * d)
            if self.triples.size:
                a, b, c3 = self.triples.T
                r = u[a] - 2.0 * u[b] + u[c3]
                k = 0.5 / p.intensity_smoothness**2
                e += k * float((r * r).sum())
                put(gu, a, 2.0 * w * k * r)
                put(gu, b, -4.0 * w * k * r)
                put(gu, c3, 2.0 * w * k * r)
            if self.fus_child.size:
                up = u[self.fus_parent]
                m = np.full(self.fus_child.size, -np.inf)
                np.maximum.at(m, self.fus_group, up)
                ex = np.exp(up - m[self.fus_group])
                tot = np.bincount(self.fus_group, ex, minlength=self.fus_child.size)
                r = u[self.fus_child] - (m + np.log(tot))
                k = 0.5 / p.mass_tolerance**2
                e += k * float((r * r).sum())
                add(gu, self.fus_child, 2.0 * w * k * r)
                soft = ex / tot[self.fus_group]
                add(gu, self.fus_parent, -2.0 * w * k * r[self.fus_group] * soft)
            terms["intensity"] = w * e

        # exclusion: compact penalty for overlapping particles
        w = p.weight_exclusion
        if w and self.exc.size:
            a, b = self.exc.T
            d = xy[a] - xy[b]
            z = (d * d).sum(1) / self.exc_r2
            one = np.where(z < 1.0, 1.0 - z, 0.0)
            terms["exclusion"] = w * float((one * one).sum())
            g = (w * -4.0 * one / self.exc_r2)[:, None] * d
            add(gxy, a, g)
            add(gxy, b, -g)

        # persistence: starts and ends away from the border
        w = p.weight_persistence
        if w and self.per_p.size:
            if p.frame_shape is None:
                terms["persistence"] = w * float(self.per_a.sum())
            else:
                # distance to the border of the field seen in that frame
                b, db = self.dets.field_border(xy[self.per_p], self.t[self.per_p], p.frame_shape)
                bd = np.maximum(b, 0.0)
                b02 = p.border_margin_px**2
                ex = np.exp(-bd * bd / b02)
                terms["persistence"] = w * float((self.per_a * (1.0 - ex)).sum())
                dpdb = w * self.per_a * 2.0 * bd / b02 * ex
                add(gxy, self.per_p, dpdb[:, None] * db)

        terms["regularisation"] = p.weight_regularisation * self.reg
        terms["persistence"] += p.weight_persistence * p.fusion_cost * self.n_fusions
        return float(sum(terms.values())), gxy, gu, terms

    def relax_intensity(
        self, xy: NDArray[np.float64], u: NDArray[np.float64], iterations: int = 4
    ) -> NDArray[np.float64]:
        """Minimise over the free log intensities with positions fixed (returns new u).

        The smoothness term makes the u-subproblem a long, stiff chain that conjugate gradient
        relaxes slowly, so it is solved directly by Gauss–Newton: the Lorentzian detection term
        is replaced by its quadratic upper bound at the current point (majorise-minimise), the
        log-sum-exp of superposed blobs and of fusions is linearised, and the sparse normal
        equations of all tracks are solved at once.
        """
        p = self.params
        free = self.free
        nf = int(free.sum())
        if nf == 0:
            return u
        idx = np.full(u.size, -1, dtype=np.int64)
        idx[free] = np.arange(nf)
        u = u.copy()
        ks = p.weight_intensity / p.intensity_smoothness**2
        km = p.weight_intensity / p.mass_tolerance**2
        prior = 1e-6 * max(ks, 1.0)  # keeps tracks without any detection well posed
        quad = _Normal(idx, prior)
        for _ in range(iterations):
            quad.start(u)
            if p.weight_detection and self.det_p.size:
                q = self.partner
                dp, dg = self.det_p, self.det_g
                qp = q[dp]
                has = qp >= 0
                partner = np.where(has, qp, dp)
                ut = np.where(has, np.logaddexp(u[dp], u[partner]), u[dp])
                sp = np.where(has, np.exp(u[dp] - ut), 1.0)
                dx = xy[dp] - self.dets.xy[dg]
                du = ut - self.dets.log_intensity[dg]
                e2 = self.det_e2
                z = (dx * dx).sum(1) / p.detection_scale_px**2 + du * du / e2
                c = self.dets.score[dg] * np.where(has, 0.5, 1.0)
                w = p.weight_detection * c / ((1.0 + z) ** 2 * e2)
                coef = np.column_stack([sp, np.where(has, 1.0 - sp, 0.0)])
                quad(np.column_stack([dp, partner]), coef, du, w)
            if p.weight_intensity and self.steps.size:
                st = self.steps
                r = u[st[:, 1]] - u[st[:, 0]]
                coef = np.tile([-1.0, 1.0], (len(st), 1))
                quad(st, coef, r, p.weight_intensity * self.drift_k)
            if ks and self.triples.size:
                tri = self.triples
                coef = np.tile([1.0, -2.0, 1.0], (len(tri), 1))
                r = u[tri[:, 0]] - 2.0 * u[tri[:, 1]] + u[tri[:, 2]]
                quad(tri, coef, r, np.full(len(tri), 0.5 * ks))
            if km and self.fus_child.size:
                up = u[self.fus_parent]
                m = np.full(self.fus_child.size, -np.inf)
                np.maximum.at(m, self.fus_group, up)
                ex = np.exp(up - m[self.fus_group])
                tot = np.bincount(self.fus_group, ex, minlength=self.fus_child.size)
                r0 = u[self.fus_child] - (m + np.log(tot))
                soft = ex / tot[self.fus_group]
                # one row per (fusion, parent slot): pad to the largest number of parents
                kmax = int(np.bincount(self.fus_group).max())
                pts = np.repeat(self.fus_child[:, None], kmax + 1, axis=1)
                coef = np.zeros((self.fus_child.size, kmax + 1))
                coef[:, 0] = 1.0
                slot = np.zeros(self.fus_group.size, dtype=np.int64)
                for g in range(self.fus_child.size):
                    sel = np.flatnonzero(self.fus_group == g)
                    slot[sel] = np.arange(1, sel.size + 1)
                pts[self.fus_group, slot] = self.fus_parent
                coef[self.fus_group, slot] = -soft
                quad(pts, coef, r0, np.full(self.fus_child.size, 0.5 * km))
            u[free] = quad.solve()
        return u


class _Normal:
    """Normal equations H u = rhs of a sum of weighted squared linear residuals in u.

    One instance serves every Gauss–Newton iteration of a `Packed.relax_intensity` call: the
    terms are added in the same order with the same points each time (only coefficients and
    weights change), so where H has entries is worked out once, at the first `solve`.
    """

    _BAND = 2  # a track's points are consecutive free indices; triples span two steps

    def __init__(self, idx: NDArray[np.int64], prior: float) -> None:
        self.idx, self.prior = idx, prior
        self.free = idx >= 0
        self.nf = int(self.free.sum())
        # (row, col) of each value, recorded in the first iteration; then `_Pattern`
        self._entries: list[tuple[NDArray[np.int64], NDArray[np.int64]]] = [
            (np.arange(self.nf), np.arange(self.nf))
        ]
        self._pattern: _Pattern | None = None

    def start(self, u: NDArray[np.float64]) -> None:
        """Begin the normal equations at the current point `u`."""
        self.u = u
        self.vals: list[NDArray[np.float64]] = [np.full(self.nf, self.prior)]
        self.rhs = self.prior * u[self.free]

    def __call__(
        self,
        pts: NDArray[np.int64],
        coef: NDArray[np.float64],
        lin: NDArray[np.float64],
        w: NDArray[np.float64],
    ) -> None:
        """Add Σ_n w_n (lin_n + Σ_j coef_nj (u_pts_nj − u0_pts_nj))² (free points only)."""
        fi = self.idx[pts]
        isf = fi >= 0
        beta = lin - (coef * self.u[pts] * isf).sum(1)
        g = (-2.0 * w * beta)[:, None] * coef
        self.rhs = self.rhs + np.bincount(fi[isf], g[isf], minlength=self.nf)
        both = isf[:, :, None] & isf[:, None, :]
        hv = 2.0 * w[:, None, None] * coef[:, :, None] * coef[:, None, :]
        if self._pattern is None:  # first iteration: record where the entries go
            self._entries.append(
                (
                    np.broadcast_to(fi[:, :, None], both.shape)[both],
                    np.broadcast_to(fi[:, None, :], both.shape)[both],
                )
            )
        self.vals.append(hv[both])

    def solve(self) -> NDArray[np.float64]:
        """The minimiser: H is symmetric positive definite and, with the free points of each
        track consecutive, pentadiagonal but for a few couplings between tracks (superposed
        blobs, fusions). A banded Cholesky factor of the band solves it, with a Woodbury
        correction for those couplings (sparse LU when they are many)."""
        from scipy.linalg import LinAlgError, cho_solve_banded, cholesky_banded

        nf, b = self.nf, self._BAND
        if self._pattern is None:
            self._pattern = _Pattern(self._entries, nf, b)
            self._entries = []
        pt = self._pattern
        vals = np.concatenate(self.vals)
        assert vals.size == pt.upper.size, "the terms changed between iterations"
        if pt.coupled.size <= 200:
            ab = np.bincount(pt.band_at, vals[pt.upper], minlength=(b + 1) * nf)
            try:
                factor = cholesky_banded(ab.reshape(b + 1, nf), lower=False, check_finite=False)
            except LinAlgError:
                factor = None
            if factor is not None:
                y = cho_solve_banded((factor, False), self.rhs, check_finite=False)
                if not pt.coupled.size:
                    return y
                # H = band + P E Pᵀ: x = y − Z (I + E Pᵀ Z)⁻¹ E Pᵀ y, with Z = band⁻¹ P
                k = pt.coupled.size
                e = np.zeros((k, k))
                np.add.at(e, pt.far_at, vals[pt.far])
                e = e + e.T  # the far entries were taken above the diagonal only
                p = np.zeros((nf, k))
                p[pt.coupled, np.arange(k)] = 1.0
                z = cho_solve_banded((factor, False), p, check_finite=False)
                m = np.eye(k) + e @ z[pt.coupled]
                return y - z @ np.linalg.solve(m, e @ y[pt.coupled])
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve

        h = coo_matrix((vals, (pt.rows, pt.cols)), shape=(nf, nf)).tocsc()
        return np.asarray(spsolve(h, self.rhs), dtype=float)


class _Pattern:
    """Where the values of `_Normal` go, split into H's upper band (bandwidth `band`) and the
    entries above it (couplings between tracks), with the points those couple."""

    def __init__(
        self, entries: list[tuple[NDArray[np.int64], NDArray[np.int64]]], nf: int, band: int
    ) -> None:
        self.rows = np.concatenate([r for r, _ in entries])
        self.cols = np.concatenate([c for _, c in entries])
        off = self.cols - self.rows
        self.upper = (off >= 0) & (off <= band)  # H is symmetric: its upper band is enough
        self.band_at = (band - off[self.upper]) * nf + self.cols[self.upper]
        self.far = np.flatnonzero(off > band)
        rows, cols = self.rows[self.far], self.cols[self.far]
        self.coupled = np.unique(np.concatenate([rows, cols]))
        self.far_at = (np.searchsorted(self.coupled, rows), np.searchsorted(self.coupled, cols))


def endpoint_energy(
    tracks: Sequence[Track],
    params: EnergyParams,
    *,
    children: set[int],
    parents: set[int],
    first_frame: int,
    last_frame: int,
    diameters: dict[int, float],
    dets: Detections | None = None,
) -> float:
    """Weighted persistence + regularisation of whole tracks (as `Packed.energy` counts them).

    Lets a move be judged on a window of frames around what it changes while the terms that
    depend on whole tracks (their ends, their length) stay exact. With `dets`, border
    distances are to the field seen in each end's frame (`Detections.field_border`).
    """
    pts, a, fr = [], [], []
    reg = 0.0
    for t in tracks:
        sf = float(params.size_factor(diameters.get(t.id, params.reference_diameter_nm)))
        if t.start > first_frame and t.id not in children:
            pts.append(t.xy[0])
            a.append(sf)
            fr.append(t.start)
        if t.end < last_frame and t.id not in parents:
            pts.append(t.xy[-1])
            a.append(sf)
            fr.append(t.end)
        reg += (0.0 if t.id in children else 1.0) + 1.0 / t.n
    per = params.fusion_cost * len(children)
    if pts:
        aa = np.array(a)
        if params.frame_shape is None:
            per += float(aa.sum())
        else:
            xy = np.array(pts)
            if dets is not None:
                bd = np.maximum(dets.field_border(xy, fr, params.frame_shape)[0], 0.0)
            else:
                h, w = params.frame_shape
                cand = np.column_stack([xy, w - 1 - xy[:, 0], h - 1 - xy[:, 1]])
                bd = np.maximum(np.min(cand, 1), 0)
            per += float((aa * (1.0 - np.exp(-bd * bd / params.border_margin_px**2))).sum())
    return params.weight_persistence * per + params.weight_regularisation * reg


def point_frames(tracks: Sequence[Track], lens: NDArray[np.int64]) -> NDArray[np.int64]:
    """Frame of every point of `tracks` laid end to end (`lens`: their lengths)."""
    first = np.array([t.start for t in tracks], dtype=np.int64) - (np.cumsum(lens) - lens)
    return np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(first, lens)


def _skip(*_: Any) -> None:
    """Stand-in for the gradient accumulators when no gradient is wanted."""


def _scatter_add(out: NDArray[np.float64], idx: NDArray[np.int64], v: NDArray[np.float64]) -> None:
    """``np.add.at(out, idx, v)`` for 1-D `out` or `out` of shape (n, 2), by bincount."""
    n = out.shape[0]
    if out.ndim == 1:
        out += np.bincount(idx, v, minlength=n)
    else:
        out[:, 0] += np.bincount(idx, v[:, 0], minlength=n)
        out[:, 1] += np.bincount(idx, v[:, 1], minlength=n)


def _distinct_add(out: NDArray[np.float64], idx: NDArray[np.int64], v: NDArray[np.float64]) -> None:
    """``out[idx] += v`` where `idx` has no repeats."""
    out[idx] += v


def _superposition(
    pk_xy: NDArray[np.float64],
    pk_u: NDArray[np.float64],
    pairs: NDArray[np.int64],
    dets: Detections,
    t: NDArray[np.int64],
    params: EnergyParams,
) -> NDArray[np.bool_]:
    """Which overlapping pairs are a crossing: the blob's intensity is clearly their sum."""
    if not pairs.size or not len(dets):
        return np.zeros(len(pairs), bool)
    a, b = pairs.T
    mid = 0.5 * (pk_xy[a] + pk_xy[b])
    dist, g = dets.tree.query(
        np.column_stack([mid, t[a] * FRAME_SEP]), distance_upper_bound=params.detection_radius_px
    )
    ok = np.isfinite(dist)
    v = dets.log_intensity[np.where(ok, g, 0)]
    both = np.logaddexp(pk_u[a], pk_u[b])
    one = np.maximum(pk_u[a], pk_u[b])
    # the sum must explain the blob better by one tolerance: a faint partner is not evidence
    return ok & (np.abs(v - both) + params.intensity_tolerance < np.abs(v - one))


def _within(
    tree: cKDTree, points: NDArray[np.float64], radius: float, k: int = 4
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Every (point, tree entry) pair at most `radius` apart. A k-nearest query, with k
    doubled until no point has k entries that near, is ~2× faster than a second tree and
    `sparse_distance_matrix` (a few detections lie within a detection radius)."""
    k = min(k, tree.n)
    while True:
        # distance_upper_bound excludes the bound itself: widen it a hair, then cut exactly
        dist, j = tree.query(points, k=k, distance_upper_bound=radius * (1.0 + 1e-9))
        if k == 1:
            dist, j = dist[:, None], j[:, None]
        if k >= tree.n or not np.isfinite(dist[:, -1]).any():
            break
        k = min(2 * k, tree.n)
    ok = dist <= radius
    return np.nonzero(ok)[0].astype(np.int64), j[ok].astype(np.int64)


def pack(
    tracks: Sequence[Track],
    dets: Detections,
    params: EnergyParams,
    *,
    n_focus: int | None = None,
    fusions: Iterable[Fusion] = (),
    first_frame: int = 0,
    last_frame: int | None = None,
    frozen_until: int = -1,
    diameters: dict[int, float] | None = None,
) -> Packed:
    """Pack tracks into a vectorised energy problem.

    Parameters
    ----------
    tracks : sequence of Track
        The first `n_focus` (default all) carry all their terms; the rest are context: they only
        enter through terms shared with a focus track (exclusion, superposition, fusion).
    dets : Detections
    params : EnergyParams
    fusions : iterable of Fusion
        Fusion links; one enters when a member is a focus track (all members must be packed).
    first_frame, last_frame : int
        Frames of the problem: tracks may start at the first and end at the last for free.
    frozen_until : int
        Points in frames ``≤ frozen_until`` are not variables.
    diameters : dict, optional
        Track id → typical diameter (nm); computed from the detections when missing.
    """
    n_focus = len(tracks) if n_focus is None else n_focus
    last_frame = dets.n_frames - 1 if last_frame is None else last_frame
    ntr = len(tracks)
    lens = np.array([tr.n for tr in tracks], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if ntr else lens
    P = int(lens.sum())
    tix = np.repeat(np.arange(ntr), lens)
    if P:
        t = point_frames(tracks, lens)
        xy = np.concatenate([tr.xy for tr in tracks]).astype(float)
        u = np.concatenate([tr.u for tr in tracks]).astype(float)
        det_all = np.concatenate([tr.det for tr in tracks])
    else:
        t, xy, u = np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0)
        det_all = np.zeros(0, np.int64)
    ids = np.array([tr.id for tr in tracks], dtype=np.int64)
    diameters = diameters or {}
    tr_d = np.array([diameters.get(int(i), np.nan) for i in ids], dtype=float)
    need = np.flatnonzero(np.isnan(tr_d))
    if need.size:
        det = np.concatenate([tracks[i].det for i in need])
        grp = np.repeat(np.arange(need.size), lens[need])
        obs = det >= 0
        med = group_median(dets.diameter_nm[det[obs]], grp[obs], need.size)
        fallback = float(np.median(dets.diameter_nm)) if len(dets) else 1.0
        tr_d[need] = np.where(np.isnan(med), fallback, med)
    diam_pt = tr_d[tix]
    focus_tr = np.arange(ntr) < n_focus
    focus_pt = focus_tr[tix]

    # consecutive points of focus tracks
    last_pt = starts + lens - 1
    nxt = np.ones(P, bool)
    if P:
        nxt[last_pt] = False
    a = np.flatnonzero(nxt & focus_pt)
    steps = np.column_stack([a, a + 1])
    tol2 = params.dynamics_tolerance**2
    step_k = 0.5 / (tol2 * params.step_var(tr_d[tix[a]]))
    first = np.zeros(P, bool)
    first[starts[lens > 0]] = True
    mid = np.flatnonzero(nxt & focus_pt & ~first)
    triples = np.column_stack([mid - 1, mid, mid + 1])
    # Milan's constant-velocity term is scaled like a step of twice the variance.
    triple_k = 0.25 / (tol2 * params.step_var(tr_d[tix[mid]]))

    # fusions that touch a focus track
    pos = {tr.id: i for i, tr in enumerate(tracks)}
    fc, fp, fg, fk = [], [], [], []
    child_of, parent_set = set(), set()
    for f in fusions:
        members = (f.child, *f.parents)
        if not all(m in pos for m in members) or not any(pos[m] < n_focus for m in members):
            continue
        ci = pos[f.child]
        g = len(fc)
        fc.append(starts[ci])
        fk.append(0.5 / (tol2 * float(params.step_var(tr_d[ci]))))
        for par in f.parents:
            fp.append(last_pt[pos[par]])
            fg.append(g)
        child_of.add(f.child)
        parent_set.update(f.parents)
    fus_child = np.array(fc, dtype=np.int64)
    fus_parent = np.array(fp, dtype=np.int64)
    fus_group = np.array(fg, dtype=np.int64)
    if fus_parent.size:
        ex = np.exp(u[fus_parent] - u[fus_parent].max())
        fus_w = ex / np.bincount(fus_group, ex)[fus_group]
    else:
        fus_w = np.zeros(0)

    # persistence and regularisation of focus tracks
    sf = params.size_factor(tr_d)
    t_start = t[starts] if P else starts
    is_child = np.isin(ids, list(child_of))
    is_parent = np.isin(ids, list(parent_set))
    ps = focus_tr & (t_start > first_frame) & ~is_child
    pe = focus_tr & (t_start + lens - 1 < last_frame) & ~is_parent
    per_p = np.concatenate([starts[ps], last_pt[pe]])
    per_a = np.concatenate([sf[ps], sf[pe]])
    reg = float((~is_child[focus_tr]).sum() + (1.0 / lens[focus_tr]).sum())
    # fusion links touching a focus track (each counted once)
    n_fus = fus_child.size

    # overlapping pairs: exclusion, or superposition (crossing on two surfaces)
    partner = np.full(P, -1, dtype=np.int64)
    exc = np.zeros((0, 2), np.int64)
    exc_r2 = np.zeros(0)
    if P > 1:
        rmax = float(params.contact_px(diam_pt.max(), diam_pt.max()))
        tree = cKDTree(np.column_stack([xy, t * FRAME_SEP]))
        pairs = tree.query_pairs(rmax * 1.2, output_type="ndarray").astype(np.int64)
        if pairs.size:
            pa, pb = pairs.T
            pairs = pairs[(tix[pa] != tix[pb]) & (focus_pt[pa] | focus_pt[pb])]
        if pairs.size:
            pa, pb = pairs.T
            r = params.contact_px(diam_pt[pa], diam_pt[pb])
            d2 = ((xy[pa] - xy[pb]) ** 2).sum(1)
            keep = d2 < (1.2 * r) ** 2
            # fusing parents in their last frame are allowed to touch
            fusing = np.isin(pa, fus_parent) & np.isin(pb, fus_parent)
            keep &= ~fusing
            pairs, r, d2 = pairs[keep], r[keep], d2[keep]
            # superposed pairs may sit apart by up to the candidate range (their blob pins only
            # their mass-weighted centre), so that they stay a pair from one pack to the next
            sup = _superposition(xy, u, pairs, dets, t, params)
            order = np.argsort(d2)
            for i in order[sup[order]]:  # closest first; a point has one partner at most
                x1, x2 = pairs[i]
                if partner[x1] < 0 and partner[x2] < 0:
                    partner[x1], partner[x2] = x2, x1
                else:
                    sup[i] = False
            exc, exc_r2 = pairs[~sup], r[~sup] ** 2

    # detection instances for focus points and their superposed partners
    counted = focus_pt.copy()
    has = partner >= 0
    sup_w = np.ones(P)
    sup_w[has] = 1.0 / (1.0 + np.exp(u[partner[has]] - u[has]))
    counted[has] |= focus_pt[partner[has]]
    cp = np.flatnonzero(counted)
    # a superposed point is seen at the pair's mass-weighted centre (as E_det measures it)
    xq = xy.copy()
    if has.any():
        xq[has] = sup_w[has, None] * xy[has] + (1.0 - sup_w[has, None]) * xy[partner[has]]
    if cp.size and len(dets):
        det_p, det_g = _within(dets.tree, np.column_stack([xq[cp], t[cp] * FRAME_SEP]),
                               params.detection_radius_px)  # fmt: skip
        det_p = cp[det_p]
    else:
        det_p = det_g = np.zeros(0, np.int64)

    return Packed(
        params=params,
        dets=dets,
        t=t,
        xy=xy,
        u=u,
        tix=tix,
        free=focus_pt & (t > frozen_until),
        starts=starts,
        det_p=det_p,
        det_g=det_g,
        det_e2=params.intensity_tol(dets.diameter_nm[det_g]) ** 2,
        partner=partner,
        sup_w=sup_w,
        n_lambda=_n_lambda(
            tracks, n_focus, dets, params, xy, t, focus_pt, det_all, tr_d, tix, starts
        ),
        steps=steps,
        step_k=step_k,
        drift_k=params.drift_k(tr_d[tix[a]]),
        triples=triples,
        triple_k=triple_k,
        fus_child=fus_child,
        fus_parent=fus_parent,
        fus_group=fus_group,
        fus_w=fus_w,
        fus_k=np.array(fk),
        exc=exc,
        exc_r2=exc_r2,
        per_p=per_p.astype(np.int64),
        per_a=per_a.astype(float),
        reg=reg,
        n_fusions=n_fus,
    )


def _n_lambda(
    tracks: Sequence[Track],
    n_focus: int,
    dets: Detections,
    params: EnergyParams,
    xy: NDArray[np.float64],
    t: NDArray[np.int64],
    focus_pt: NDArray[np.bool_],
    det: NDArray[np.int64],
    tr_d: NDArray[np.float64],
    tix: NDArray[np.int64],
    starts: NDArray[np.int64],
) -> int:
    """Points whose λ is counted: Milan's λ prices a point that explains no detection, not
    one out of view (outside the field, or an undetected point near its edge that was more
    likely out of view than missed, `out_of_view`)."""
    if not xy.shape[0]:
        return 0
    keep = focus_pt & dets.in_view(xy, t)
    gap = np.flatnonzero(keep & (det < 0))
    if gap.size and dets.frame_shape is not None:
        near = gap[
            dets.field_border(xy[gap], t[gap], params.frame_shape)[0] < 3.0 * params.max_step_px
        ]
        if near.size:
            for i in np.unique(tix[near]).tolist():
                if i < n_focus:
                    out = out_of_view(tracks[i], dets, params, float(tr_d[i]))
                    keep[starts[i] : starts[i] + tracks[i].n] &= ~out
    return int(keep.sum())


def energy(
    solution: Solution, dets: Detections, params: EnergyParams, *, terms: bool = False
) -> Any:
    """Total energy of a solution (and the value of each weighted term if `terms`)."""
    pk = pack(
        list(solution.tracks.values()),
        dets,
        params,
        fusions=solution.fusions.values(),
        first_frame=solution.first_frame,
        last_frame=solution.last_frame,
    )
    e, _, _, parts = pk.energy()
    return (e, parts) if terms else e
