"""From a probability map to one label per particle: threshold, clean, separate.

Separation of touching / overlapping particles, selectable:

- ``watershed`` (Faraz et al. 2022): ultimate eroded points, i.e. maxima of the distance
  transform that stand at least ``h_px`` above the pass to a higher neighbour, seed a
  marker-controlled watershed of the distance transform. ``h_px`` = 1 px ignores the
  digitisation ripples along the ridge of an elongated particle (plain regional maxima split
  a 60 × 20 px ellipse in five) while two disks overlapping by 40 % still have two markers.
  Optionally (``image`` and ``intensity_h``), a shallower maximum still seeds its own particle
  when the image has a peak of its own there, at least ``intensity_h`` above the image's
  highest pass to the neighbouring basin: two overlapping particles in ADF-STEM, where the
  intensity is the projected mass, whose union is nearly convex.
- ``uecs`` (Park et al.; Gumbiowski et al. 2023, ANTEMA): erode a region step by step; where
  a non-convex piece breaks, its pieces of at least the minimum marker size become markers;
  markers grow back by as many steps as they were eroded, inside the original outline. A
  region that yields fewer than two markers stays whole (the measurement sets its
  ``agglomerate`` flag when it is not convex). See `_uecs_region` for how this differs from
  ANTEMA's stopping rule.
- ``none``: connected regions as they are.

With a model that gives each particle's centre map (`split_centres`), a region holding two or
more cores of that map (pixels above a level, each particle's inner part) is cut between them
by a watershed of the map, whatever the method; a region with one core stays whole, and a
region with none is left to the method above.

All functions take and return arrays; 8-connectivity throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import local_maxima
from skimage.segmentation import expand_labels, watershed

from nptrack.measure.props import edt, is_convex

__all__ = [
    "SplitResult",
    "border_mask",
    "clean_mask",
    "fill_separation_lines",
    "label_range",
    "split_centres",
    "split_particles",
    "split_uecs",
    "split_watershed",
]

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class SplitResult:
    """Particles after separation.

    Attributes
    ----------
    labels : ndarray of int32, shape (H, W)
        0 = background, 1..N = particles.
    separated : ndarray of bool, shape (N,)
        True where the particle was cut out of a larger region.
    """

    labels: np.ndarray
    separated: np.ndarray

    @property
    def count(self) -> int:
        return int(self.separated.size)


def _sized_components(
    mask: np.ndarray, connectivity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of `mask` (flat indices), their component, and the component sizes.

    OpenCV labels (faster than ndi.label); sizes are counted over the mask's pixels only.
    """
    u8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    _, lab = cv2.connectedComponents(u8, connectivity=connectivity)
    at = np.flatnonzero(u8)
    comp = lab.ravel()[at]
    return at, comp, np.bincount(comp, minlength=1)


def _remove_small(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    if min_area_px <= 1:
        return mask.copy()
    at, comp, sizes = _sized_components(mask, 8)
    small = sizes < min_area_px
    small[0] = False
    out = mask.copy()
    if small.any():
        out.ravel()[at[small[comp]]] = False
    return out


def clean_mask(
    mask: np.ndarray, *, min_area_px: float = 0.0, max_hole_px: float = 0.0
) -> np.ndarray:
    """Remove particles smaller than `min_area_px` and fill holes smaller than `max_hole_px`.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Foreground (particles).
    min_area_px, max_hole_px : float
        Areas in pixels (convert a size in nm with ``π/4 · (d_nm / pixel_nm)²``).

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    mask = np.asarray(mask, dtype=bool)
    out = _remove_small(mask, min_area_px)
    if max_hole_px > 0:
        # Holes are background components not touching the border (4-connected, the dual
        # of 8-connected foreground).
        # The background reached from outside the image is flooded first: what is left are
        # the holes, few pixels, labelled and sized on their own.
        outside = np.pad(~out, 1, constant_values=True).view(np.uint8)
        cv2.floodFill(outside, None, (0, 0), 0, flags=4)
        at, comp, sizes = _sized_components(outside[1:-1, 1:-1], 4)
        fill = sizes < max_hole_px
        fill[0] = False
        out.ravel()[at[fill[comp]]] = True
    return out


def border_mask(labels: np.ndarray) -> np.ndarray:
    """Which labels touch the image border.

    Returns
    -------
    ndarray of bool, shape (N,)
    """
    n = int(labels.max(initial=0))
    flags = np.zeros(n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        flags[edge] = True
    return flags[1:]


def _regions(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, slice] | None]]:
    lab, _ = ndi.label(mask, structure=_EIGHT)
    return lab, ndi.find_objects(lab)


def _padded_crop(lab: np.ndarray, sl: tuple[slice, slice], value: int) -> np.ndarray:
    crop = lab[sl]
    out = np.zeros((crop.shape[0] + 2, crop.shape[1] + 2), dtype=bool)  # np.pad is 7x slower
    np.equal(crop, value, out=out[1:-1, 1:-1])
    return out


def _several_maxima(
    lab: np.ndarray, slices: list[tuple[slice, slice] | None]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Regions whose distance transform has two or more maxima: index -> (crop, distance).

    Most regions have one maximum and are not split. Each region's distance transform is
    computed on its own padded crop (as the split does: OpenCV's values on a crop and on the
    whole frame differ in the last bit, which would move plateaus) and pasted into one
    frame, where the maxima of all regions are found at once: a region's pixels only
    neighbour its own pixels and background, so each region's maxima are the same as on its
    crop.
    """
    h, w = lab.shape
    dist = np.zeros((h + 2, w + 2), np.float32)
    crops = {}
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        region = _padded_crop(lab, sl, i + 1)
        d = edt(region)
        crops[i] = (region, d)
        r0, c0 = sl[0].start, sl[1].start
        view = dist[r0 : r0 + d.shape[0], c0 : c0 + d.shape[1]]
        np.maximum(view, d, out=view)  # 0 outside the region
    peaks = (local_maxima(dist) & (dist > 0))[1:-1, 1:-1]
    n_peaks, comp = cv2.connectedComponents(peaks.view(np.uint8), connectivity=8)
    region_of = np.zeros(n_peaks, np.int64)  # peak component -> region label
    region_of[comp[peaks]] = lab[peaks]
    count = np.bincount(region_of[1:], minlength=len(slices) + 1)[1:]
    return {i: crops[i] for i in np.nonzero(count >= 2)[0].tolist()}


def _assemble(
    lab: np.ndarray,
    n_regions: int,
    pieces: dict[int, tuple[tuple[slice, slice], np.ndarray]],
) -> SplitResult:
    """One label per piece: regions in order, each region's pieces in order of their ids.

    `pieces` holds the piece labels (crops padded by 1 px) of the regions that were
    processed; every other region is one piece.
    """
    count = np.zeros(n_regions + 1, np.int64)
    count[1:] = 1
    ids_of = {}
    for i, (_, crop) in pieces.items():
        inner = crop[1:-1, 1:-1]
        ids_of[i] = np.unique(inner[inner > 0])
        count[i + 1] = len(ids_of[i])
    first = np.cumsum(count) - count + 1  # first new label of each region
    first[0] = 0
    lut = first.astype(np.int32)
    lut[[i + 1 for i in pieces]] = 0
    labels = lut[lab]
    for i, (sl, crop) in pieces.items():
        inner = crop[1:-1, 1:-1]
        fg = inner > 0
        ids = ids_of[i]
        piece_lut = np.zeros(int(ids[-1]) + 1, dtype=np.int32)
        piece_lut[ids] = np.arange(first[i + 1], first[i + 1] + len(ids))
        labels[sl][fg] = piece_lut[inner[fg]]
    separated = np.repeat(count[1:] > 1, count[1:])
    return SplitResult(labels, separated)


def _saddles(basins: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, height) for every pair of touching basins: the highest pass between them."""
    us, vs, hs = [], [], []
    for a, b, da, db in (  # 8-neighbour pairs: right, down, down-right, down-left
        (basins[:, :-1], basins[:, 1:], dist[:, :-1], dist[:, 1:]),
        (basins[:-1, :], basins[1:, :], dist[:-1, :], dist[1:, :]),
        (basins[:-1, :-1], basins[1:, 1:], dist[:-1, :-1], dist[1:, 1:]),
        (basins[:-1, 1:], basins[1:, :-1], dist[:-1, 1:], dist[1:, :-1]),
    ):
        m = (a != b) & (a > 0) & (b > 0)
        us.append(np.minimum(a[m], b[m]))
        vs.append(np.maximum(a[m], b[m]))
        hs.append(np.minimum(da[m], db[m]))
    u, v, h = np.concatenate(us), np.concatenate(vs), np.concatenate(hs)
    if u.size == 0:
        return u, v, h
    key = u.astype(np.int64) * (int(basins.max()) + 1) + v
    order = np.lexsort((-h, key))  # by pair, highest pass first
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = order[first]
    return u[keep], v[keep], h[keep]


def _merge_shallow_basins(
    basins: np.ndarray,
    peaks: np.ndarray,
    dist: np.ndarray,
    h_px: float,
    image: np.ndarray | None = None,
    intensity_h: float = 0.0,
) -> np.ndarray:
    """Merge watershed basins whose peak rises less than `h_px` above its pass (its dynamic).

    Equivalent to seeding the watershed with h-maxima, without a grayscale reconstruction
    (whose sort dominated the run time on large regions). Passes are visited from the highest
    down (a maximum spanning tree of the basin graph); when two groups meet, the lower group's
    top peak gets its dynamic; if that is below `h_px`, the group joins the basin across the
    pass, unless `image` (same shape, particles positive) rises at least `intensity_h` above
    its own highest pass between the two basins in both groups.
    """
    n = int(basins.max())
    peak = np.zeros(n + 1)
    at_peak = peaks > 0
    peak[peaks[at_peak]] = dist[at_peak]  # a basin's peak is its seed (a flat maximum)
    u, v, height = _saddles(basins, dist)
    parent = np.arange(n + 1)
    top = np.arange(n + 1)  # highest peak of each group (at its root)
    target = np.arange(n + 1)  # where a shallow basin goes
    by_image = image is not None and intensity_h > 0
    if by_image:
        inside = basins > 0
        bright = np.full(n + 1, -np.inf)  # the image's maximum over each group (at its root)
        np.maximum.at(bright, basins[inside], image[inside])
        iu, iv, ih = _saddles(basins, image)
        image_pass = dict(zip((iu * (n + 1) + iv).tolist(), ih.tolist(), strict=True))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for i in np.argsort(-height, kind="stable"):
        a, b = int(u[i]), int(v[i])
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if peak[top[ra]] > peak[top[rb]]:
            ra, rb, a, b = rb, ra, b, a
        low = int(top[ra])
        if peak[low] - height[i] <= h_px:  # as h-maxima: a dynamic of exactly h is merged
            kept = False
            if by_image:
                level = image_pass[min(a, b) * (n + 1) + max(a, b)]
                kept = min(bright[ra], bright[rb]) - level >= intensity_h
            if not kept:
                target[low] = b
        if by_image:
            bright[rb] = max(bright[rb], bright[ra])
        parent[ra] = rb
    for x in range(1, n + 1):  # follow chains to a kept basin (peaks rise along them)
        y = x
        while target[y] != y:
            y = int(target[y])
        target[x] = y
    return target[basins]


def split_watershed(
    mask: np.ndarray,
    *,
    h_px: float = 1.0,
    image: np.ndarray | None = None,
    intensity_h: float = 0.0,
    smooth_px: float = 1.0,
) -> SplitResult:
    """Separate touching particles by a watershed seeded at ultimate eroded points.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Clean foreground.
    h_px : float
        Minimum dynamic (px) of a distance-transform maximum to seed its own particle.
    image : ndarray of float, shape (H, W), optional
        The frame, particles brighter than the support. It is smoothed by a Gaussian of
        `smooth_px` around each region that has several distance maxima (the values of smoothing the
        whole frame, to float rounding).
    intensity_h : float
        A distance maximum of lower dynamic than `h_px` still seeds its own particle when
        the smoothed `image` rises at least this far above its highest pass between the two
        basins, on both sides (units of `image`; 0: distance only).
    smooth_px : float
        Sigma of that Gaussian (px).

    Returns
    -------
    SplitResult
    """
    lab, slices = _regions(mask)
    pieces = {}
    for i, (region, dist) in _several_maxima(lab, slices).items():
        peaks, _ = ndi.label(local_maxima(dist) & region, structure=_EIGHT)
        basins = watershed(-dist, peaks, mask=region)
        crop = None
        if image is not None and intensity_h > 0:
            crop = np.zeros(region.shape, np.float32)  # padded by 1 px, as the region
            crop[1:-1, 1:-1] = _smoothed_crop(image, slices[i], smooth_px)
        merged = _merge_shallow_basins(basins, peaks, dist, h_px, crop, intensity_h)
        pieces[i] = (slices[i], merged.astype(np.int32))
    return _assemble(lab, len(slices), pieces)


def _smoothed_crop(image: np.ndarray, sl: tuple[slice, slice], sigma_px: float) -> np.ndarray:
    """``GaussianBlur(image)[sl]`` computed on the crop and a margin of the kernel's radius."""
    if sigma_px <= 0:
        return np.asarray(image[sl], dtype=np.float32)
    h, w = image.shape
    k = round(sigma_px * 8 + 1) | 1  # OpenCV's kernel size for float images
    m = k // 2
    r0, r1 = max(sl[0].start - m, 0), min(sl[0].stop + m, h)
    c0, c1 = max(sl[1].start - m, 0), min(sl[1].stop + m, w)
    part = np.ascontiguousarray(image[r0:r1, c0:c1], dtype=np.float32)
    smooth = cv2.GaussianBlur(part, (k, k), sigma_px)
    return smooth[sl[0].start - r0 : sl[0].stop - r0, sl[1].start - c0 : sl[1].stop - c0]


_STEP_PX = 0.5  # erosion step: pieces are caught just after their neck breaks
_PERSISTENCE_PX = 1.0  # a piece must survive this much further erosion to count


def _uecs_region(region: np.ndarray, threshold: float, min_marker_px: float) -> np.ndarray:
    """UECS on one padded region crop; returns its piece labels (all 1 when not split).

    The region is eroded in half-pixel steps (level sets of the distance transform; only the
    steps where a piece can break are visited). Where a non-convex piece breaks into two or
    more pieces that are each at least `min_marker_px` and survive one more pixel of erosion,
    those pieces become markers (and are eroded further in case they break again). The final
    markers grow back by their erosion depth.

    ANTEMA stops eroding as soon as a piece is convex, so two disks overlapping by more than
    ~12 % of their area (outline convexity 0.99, solidity 0.98) are never split. Here the
    convexity test is applied to the piece just before it breaks, which is always strongly
    concave for overlapping disks (solidity < 0.8), while a convex particle never breaks into
    persistent pieces (the erosion of a convex set is convex).
    """
    dist = edt(region)
    peaks, n_peaks = ndi.label(local_maxima(dist) & region, structure=_EIGHT)
    if n_peaks < 2:  # one maximum: no erosion level can break the region
        return region.astype(np.int32)
    # Erosion levels only change the pieces at the passes between persistent maxima: visit
    # those levels (just above each pass) instead of every half pixel.
    basins = _merge_shallow_basins(
        watershed(-dist, peaks, mask=region), peaks, dist, _PERSISTENCE_PX
    )
    _, _, passes = _saddles(basins, dist)
    if passes.size == 0:
        return region.astype(np.int32)
    levels = np.unique(np.maximum(np.ceil(passes / _STEP_PX), 1.0) * _STEP_PX)
    prev = region.astype(np.int32)
    owner = {1: 0}  # component label at the previous visited level -> marker index
    markers: list[tuple[np.ndarray, float]] = [(region, 0.0)]
    parents_of: dict[int, int] = {}  # marker -> marker it split from
    for k in levels:
        # The pieces just before this level (owned as at the previous visited level) ...
        before, _ = ndi.label(dist > k - _STEP_PX, structure=_EIGHT)
        _, first = np.unique(before.ravel(), return_index=True)
        above = prev.ravel()[first[1:]]
        owner = {j + 1: owner[int(a)] for j, a in enumerate(above) if int(a) in owner}
        # ... and at this level.
        lab, n = ndi.label(dist > k, structure=_EIGHT)
        if n == 0:
            break
        index = np.arange(1, n + 1)
        size = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        top = np.zeros(n + 1)
        np.maximum.at(top, lab.ravel(), dist.ravel())
        _, first = np.unique(lab.ravel(), return_index=True)
        parent = before.ravel()[first[1:]]
        keep = (size >= min_marker_px) & (top[1:] - k >= _PERSISTENCE_PX)
        new_owner: dict[int, int] = {}
        for p in np.unique(parent):
            if p not in owner:
                continue
            kids = index[(parent == p) & keep]
            if len(kids) >= 2 and not is_convex(before == p, threshold=threshold):
                for j in kids:
                    parents_of[len(markers)] = owner[p]
                    new_owner[int(j)] = len(markers)
                    markers.append((lab == j, float(k)))
            else:
                for j in index[parent == p]:
                    new_owner[int(j)] = owner[p]
        prev, owner = lab, new_owner
    leaves = [i for i in range(len(markers)) if i not in parents_of.values()]
    if len(leaves) < 2:
        return region.astype(np.int32)
    seeds = np.zeros(region.shape, dtype=np.int32)
    depth = np.zeros(len(leaves) + 1)
    for new_id, i in enumerate(leaves, start=1):
        seeds[markers[i][0]] = new_id
        depth[new_id] = markers[i][1]
    # Grow each marker back by its erosion depth; a pixel goes to the nearest marker.
    gap, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[iy, ix]
    grown = np.where(region & (gap <= depth[nearest] + 1.0), nearest, 0)
    # Pixels no marker reaches (the neck, dropped crumbs) join their neighbour downhill.
    return watershed(-dist, grown, mask=region).astype(np.int32)


def split_uecs(
    mask: np.ndarray, *, convexity_threshold: float = 0.95, min_marker_px: float = 30
) -> SplitResult:
    """Separate overlapping particles by ultimate erosion of convex shapes (UECS).

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Clean foreground.
    convexity_threshold : float
        Only a piece that fails `is_convex` at this threshold may break (0.95 as in ANTEMA).
    min_marker_px : float
        Pieces smaller than this (pixels) are dropped as markers.

    Returns
    -------
    SplitResult
    """
    lab, slices = _regions(mask)
    pieces = {}
    for i, (region, _) in _several_maxima(lab, slices).items():  # one maximum: no split
        pieces[i] = (slices[i], _uecs_region(region, convexity_threshold, min_marker_px))
    return _assemble(lab, len(slices), pieces)


def split_particles(
    mask: np.ndarray,
    *,
    method: Literal["watershed", "uecs", "none"] = "watershed",
    h_px: float = 1.0,
    convexity_threshold: float = 0.95,
    min_marker_px: float = 30,
    image: np.ndarray | None = None,
    intensity_h: float = 0.0,
) -> SplitResult:
    """Label particles in a clean mask, separating touching ones with `method`.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
    method : {'watershed', 'uecs', 'none'}
    h_px : float
        Marker dynamic for 'watershed' (px).
    convexity_threshold, min_marker_px : float
        Settings of 'uecs'.
    image, intensity_h
        The image rule of 'watershed' (see `split_watershed`).

    Returns
    -------
    SplitResult
    """
    mask = np.asarray(mask, dtype=bool)
    if method == "watershed":
        return split_watershed(mask, h_px=h_px, image=image, intensity_h=intensity_h)
    if method == "uecs":
        return split_uecs(
            mask, convexity_threshold=convexity_threshold, min_marker_px=min_marker_px
        )
    if method == "none":
        lab, n = ndi.label(mask, structure=_EIGHT)
        return SplitResult(lab.astype(np.int32), np.zeros(n, dtype=bool))
    raise ValueError(f"unknown split method {method!r} (watershed, uecs or none)")


def split_centres(
    mask: np.ndarray,
    centres: np.ndarray,
    *,
    threshold: float = 0.5,
    fallback: Callable[[np.ndarray, np.ndarray | None], SplitResult] | None = None,
    image: np.ndarray | None = None,
    min_dynamic: float | None = None,
) -> SplitResult:
    """Separate touching particles at the cores of a centre map.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Clean foreground.
    centres : ndarray of float, shape (H, W)
        The model's centre map: 1 at each particle's inner point, falling to 0 at its outline
        and where it meets another particle (:func:`nptrack.segment.data.centre_target`).
    threshold : float
        Pixels of `mask` above this level form the cores (8-connected), one per particle.
    fallback : callable, optional
        ``fallback(region_mask, region_image)`` splits a region without any core (a faint
        particle the centre channel missed); e.g. a `split_watershed` with its settings.
        Such regions stay whole when None.
    image : ndarray of float, shape (H, W), optional
        Passed to `fallback` cropped as the region.
    min_dynamic : float, optional
        For a regressed centre map (domes, not cores): each maximum of the map that rises at
        least this far above its highest pass to a higher one marks a particle, and a
        region's pixels go to the basins of those maxima (a watershed of the map, shallower
        maxima merged across their pass). `threshold` is then only the least a region's
        highest value must reach for its map to be used (else `fallback`).

    Returns
    -------
    SplitResult
    """
    mask = np.asarray(mask, dtype=bool)
    centres = np.asarray(centres, dtype=np.float32)
    if min_dynamic is not None:
        return _split_at_domes(mask, centres, threshold, min_dynamic, fallback, image)
    lab, slices = _regions(mask)
    n_cores, cores = cv2.connectedComponents(
        ((centres > threshold) & mask).view(np.uint8), connectivity=8
    )
    region_of = np.zeros(n_cores, np.int64)  # core -> region label
    at = cores > 0
    region_of[cores[at]] = lab[at]
    count = np.bincount(region_of[1:], minlength=len(slices) + 1)[1:]
    pieces = {}
    for i, sl in enumerate(slices):
        if sl is None or count[i] == 1:
            continue
        region = _padded_crop(lab, sl, i + 1)
        if count[i] == 0:
            if fallback is not None:
                piece = _fallback_piece(region, sl, fallback, image)
                if piece is not None:
                    pieces[i] = (sl, piece)
            continue
        seeds = np.zeros(region.shape, np.int32)
        seeds[1:-1, 1:-1] = np.where(region[1:-1, 1:-1], cores[sl], 0)
        landscape = np.zeros(region.shape, np.float32)
        landscape[1:-1, 1:-1] = centres[sl]
        pieces[i] = (sl, watershed(-landscape, seeds, mask=region).astype(np.int32))
    return _assemble(lab, len(slices), pieces)


def _fallback_piece(
    region: np.ndarray,
    sl: tuple[slice, slice],
    fallback: Callable[[np.ndarray, np.ndarray | None], SplitResult],
    image: np.ndarray | None,
) -> np.ndarray | None:
    crop = None
    if image is not None:
        crop = np.pad(np.asarray(image[sl], np.float32), 1, mode="edge")
    split = fallback(region, crop).labels
    return split.astype(np.int32) if split.max() > 0 else None  # dropped: left whole


def _split_at_domes(
    mask: np.ndarray,
    centres: np.ndarray,
    threshold: float,
    min_dynamic: float,
    fallback: Callable[[np.ndarray, np.ndarray | None], SplitResult] | None,
    image: np.ndarray | None,
) -> SplitResult:
    """`split_centres` with ``min_dynamic``: markers at the map's deep maxima per region."""
    lab, slices = _regions(mask)
    top = np.zeros(len(slices) + 1, np.float32)
    inside = lab > 0
    np.maximum.at(top, lab[inside], centres[inside])
    pieces = {}
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        region = _padded_crop(lab, sl, i + 1)
        if top[i + 1] < threshold:  # the centre channel did not see this one
            if fallback is not None:
                piece = _fallback_piece(region, sl, fallback, image)
                if piece is not None:
                    pieces[i] = (sl, piece)
            continue
        land = np.zeros(region.shape, np.float32)  # padded by 1 px, as the region
        land[1:-1, 1:-1] = np.where(region[1:-1, 1:-1], centres[sl], 0.0)
        peaks, n_peaks = ndi.label(local_maxima(land) & region, structure=_EIGHT)
        if n_peaks < 2:
            continue
        basins = watershed(-land, peaks, mask=region)
        merged = _merge_shallow_basins(basins, peaks, land, min_dynamic)
        pieces[i] = (sl, merged.astype(np.int32))
    return _assemble(lab, len(slices), pieces)


def label_range(labels: np.ndarray, *, radius_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest particle label within `radius_px` (Chebyshev) of each pixel.

    Two different particles are that near a pixel where ``lowest < highest``; a pixel of
    particle L has another one that near where ``lowest < L`` or ``highest > L``.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        0 = background (ids below 2**24, exact in float32).
    radius_px : int

    Returns
    -------
    lowest : ndarray of float32, shape (H, W)
        Smallest non-zero label near the pixel, inf where there is none.
    highest : ndarray of float32, shape (H, W)
        Largest label near the pixel, 0 where there is none.
    """
    kernel = np.ones((2 * radius_px + 1,) * 2, np.uint8)
    as_float = labels.astype(np.float32)
    highest = cv2.dilate(as_float, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    nonzero = np.where(labels > 0, as_float, np.float32(np.inf))
    lowest = cv2.erode(nonzero, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
    return lowest, highest


def fill_separation_lines(
    labels: np.ndarray, *, separation_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Give the background lines a model leaves between touching particles back to them.

    A model trained with separation lines (``data.separation_px`` of the training config,
    ``separation_px`` in its metadata) marks the ``separation_px`` pixels of each particle
    next to a touching neighbour as background, so touching particles arrive as separate
    regions. A background pixel is filled when a particle lies within ``separation_px`` of it
    and another particle within ``2 * separation_px``; it goes to the nearest one. Gaps wider
    than the line (real background between particles) stay as they are.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        0 = background.
    separation_px : int
        Half-width of the model's lines, pixels (0: labels returned unchanged).

    Returns
    -------
    labels : ndarray of int32, shape (H, W)
    touching : ndarray of int
        Labels that received pixels of a line, i.e. that touch another particle.
    """
    labels = np.asarray(labels, np.int32)
    if separation_px <= 0 or labels.max(initial=0) == 0:
        return labels, np.zeros(0, np.int64)
    lowest, highest = label_range(labels, radius_px=2 * separation_px)
    near = np.ones((2 * separation_px + 1,) * 2, np.uint8)
    close = cv2.dilate((labels > 0).astype(np.uint8), near) > 0
    # One pass only: a second one would zip on into the notches where two outlines meet,
    # real background. Where the line came out a pixel wider (a kink), a pixel stays open.
    line = (labels == 0) & close & (highest > 0) & (lowest < highest)
    if not line.any():
        return labels, np.zeros(0, np.int64)
    grown = expand_labels(labels, distance=separation_px)
    out = labels.copy()
    out[line] = grown[line]
    return out, np.unique(out[line & (out > 0)]).astype(np.int64)
