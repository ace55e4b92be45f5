"""Small synthetic ground truth for the tracker tests (independent of nptrack.simulate).

Brownian particles whose step variance follows d^-2, scripted fusions with conserved volume
(intensity ∝ d³), a particle on the top surface crossing one on the bottom surface, a birth, a
vanishing and an exit. Detections are the truth with localisation noise, some misses, some false
positives, and one blob (summed intensity) where two particles overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nptrack.track.energy import Detections

SHAPE = (200, 200)
PX_NM = 0.4


@dataclass
class Scene:
    truth: dict[str, np.ndarray]
    events: list[tuple[int, str, str]]
    dets: Detections
    notes: dict[str, int] = field(default_factory=dict)


class _Pop:
    def __init__(self) -> None:
        self.rows: list[tuple[int, int, float, float, float, float, int]] = []
        self.events: list[tuple[int, str, str]] = []

    def add(self, t: int, i: int, xy: np.ndarray, d: float, layer: int) -> None:
        self.rows.append((t, i, float(xy[0]), float(xy[1]), d, 100.0 * d**3, layer))


def make_scene(
    *,
    seed: int = 0,
    n_frames: int = 30,
    n_particles: int = 14,
    fusions: int = 1,
    crossing: bool = True,
    birth: bool = True,
    vanish: bool = True,
    exit: bool = True,
    sigma0_px: float = 0.8,
    noise_px: float = 0.25,
    miss: float = 0.02,
    fp_per_frame: float = 0.3,
) -> Scene:
    rng = np.random.default_rng(seed)
    h, w = SHAPE
    pop = _Pop()
    nid = 0
    placed: list[np.ndarray] = []

    def free_spot(margin: float = 25.0, sep: float = 22.0) -> np.ndarray:
        for _ in range(1000):
            p = rng.uniform([margin, margin], [w - margin, h - margin])
            if all(np.hypot(*(p - q)) > sep for q in placed):
                placed.append(p)
                return p
        raise RuntimeError("scene too crowded")

    def walk(x0: np.ndarray, d: float, t0: int, t1: int, drift=(0.0, 0.0)) -> list[np.ndarray]:
        s = sigma0_px * (d / 3.0) ** -1.0
        out = [x0]
        for _ in range(t0, t1):
            out.append(out[-1] + np.asarray(drift) + rng.normal(0, s, 2))
        return out

    # fusions: two particles drift together and become one with the summed volume
    for k in range(fusions):
        da, db = rng.uniform(2.5, 3.5, 2)
        c = free_spot(sep=40.0)
        placed.append(c)
        tf = n_frames // 2 + 2 * k
        # start apart, end touching (sum of radii) in the frame before the fusion
        contact = 0.5 * (da + db) / PX_NM
        half = np.array([contact + 4.0, 0.0])
        pa, pb = [c - half], [c + half]
        for _ in range(tf - 1):
            sep = pb[-1] - pa[-1]
            dist = float(np.hypot(*sep))
            pull = 0.15 * max(dist - contact, 0.0) * sep / dist
            pa.append(pa[-1] + pull + rng.normal(0, 0.5, 2))
            pb.append(pb[-1] - pull + rng.normal(0, 0.5, 2))
        ia, ib = nid, nid + 1
        for t in range(tf):
            pop.add(t, ia, pa[t], da, 0)
            pop.add(t, ib, pb[t], db, 0)
        dc = (da**3 + db**3) ** (1 / 3)
        wa, wb = da**3, db**3
        centre = (wa * pa[-1] + wb * pb[-1]) / (wa + wb)
        pc = walk(centre, dc, tf, n_frames - 1)
        for t in range(tf, n_frames):
            pop.add(t, nid + 2, pc[t - tf], dc, 0)
        pop.events.append((tf, "fusion", f"{ia}+{ib}>{nid + 2}"))
        nid += 3

    # crossing: a top-surface particle drifts over a bottom-surface one
    if crossing:
        d0, d1 = 3.2, 2.6
        c = free_spot(margin=45.0, sep=45.0)
        tc = n_frames // 2
        p0 = walk(c, d0, 0, n_frames - 1)
        p1 = walk(c - [1.2 * tc, 0], d1, 0, n_frames - 1, drift=(1.2, 0))
        for t in range(n_frames):
            pop.add(t, nid, p0[t], d0, 0)
            pop.add(t, nid + 1, p1[t], d1, 1)
        pop.events.append((tc, "crossing", f"{nid},{nid + 1}"))
        nid += 2

    if birth:
        tb = n_frames // 3
        p = walk(free_spot(), 1.2, tb, n_frames - 1)
        for t in range(tb, n_frames):
            pop.add(t, nid, p[t - tb], 1.2 + 0.02 * (t - tb), 0)
        pop.events.append((tb, "birth", str(nid)))
        nid += 1
    if vanish:
        tv = 2 * n_frames // 3
        p = walk(free_spot(), 1.4, 0, tv)
        for t in range(tv + 1):
            pop.add(t, nid, p[t], 1.4 - 0.01 * t, 0)
        pop.events.append((tv + 1, "death", str(nid)))  # first frame without it
        nid += 1
    if exit:
        y = rng.uniform(60, h - 60)
        p = walk(np.array([14.0, y]), 3.0, 0, n_frames - 1, drift=(-1.0, 0))
        last = max(t for t in range(n_frames) if p[t][0] >= 0)
        for t in range(last + 1):
            pop.add(t, nid, p[t], 3.0, 0)
        pop.events.append((last + 1, "exit", str(nid)))
        nid += 1

    while nid < n_particles:
        d = float(rng.uniform(2.0, 4.5))
        p = walk(free_spot(), d, 0, n_frames - 1)
        for t in range(n_frames):
            pop.add(t, nid, p[t], d, 0)
        nid += 1

    arr = np.array(pop.rows)
    truth = {
        "frame": arr[:, 0].astype(int),
        "id": arr[:, 1].astype(int),
        "x": arr[:, 2],
        "y": arr[:, 3],
        "diameter_nm": arr[:, 4],
        "intensity": arr[:, 5],
        "layer": arr[:, 6].astype(int),
    }
    order = np.lexsort((truth["id"], truth["frame"]))
    truth = {k: v[order] for k, v in truth.items()}
    return Scene(
        truth, sorted(pop.events), detections_from_truth(truth, rng, noise_px, miss, fp_per_frame)
    )


def detections_from_truth(
    truth: dict[str, np.ndarray],
    rng: np.random.Generator,
    noise_px: float = 0.25,
    miss: float = 0.02,
    fp_per_frame: float = 0.3,
    *,
    shape: tuple[int, int] = SHAPE,
    pixel_size_nm: float = PX_NM,
    clip: bool = True,
    merge_factor: float = 0.8,
) -> Detections:
    """Imperfect detections of a ground truth: noise, misses, false positives, merged blobs.

    Particles whose centres are closer than `merge_factor` × the sum of their radii come out
    as one blob (summed intensity, intensity-weighted centre), as a segmentation that cannot
    split them would give.
    """
    h, w = shape
    rows = []
    n_frames = int(truth["frame"].max()) + 1
    for t in range(n_frames):
        sel = np.flatnonzero(truth["frame"] == t)
        xy = np.column_stack([truth["x"][sel], truth["y"][sel]])
        d = truth["diameter_nm"][sel]
        inten = truth["intensity"][sel]
        used = np.zeros(sel.size, bool)
        for i in range(sel.size):
            if used[i]:
                continue
            group = [i]
            for j in range(i + 1, sel.size):
                r = 0.5 * merge_factor * (d[i] + d[j]) / pixel_size_nm
                if not used[j] and np.hypot(*(xy[i] - xy[j])) < r:
                    group.append(j)
            used[group] = True
            g = np.array(group)
            tot = inten[g].sum()
            c = (inten[g, None] * xy[g]).sum(0) / tot
            outside = not (0 <= c[0] <= w - 1 and 0 <= c[1] <= h - 1)
            if (clip and outside) or rng.random() < miss:
                continue
            c = c + rng.normal(0, noise_px, 2)
            dd = float(np.sqrt((d[g] ** 2).sum()))
            rows.append(
                (
                    t,
                    c[0],
                    c[1],
                    dd * (1 + rng.normal(0, 0.03)),
                    tot * (1 + rng.normal(0, 0.04)),
                    rng.uniform(0.8, 1.0),
                )
            )
        for _ in range(rng.poisson(fp_per_frame)):
            rows.append(
                (
                    t,
                    rng.uniform(0, w - 1),
                    rng.uniform(0, h - 1),
                    rng.uniform(1.0, 2.5),
                    rng.uniform(100, 1500),
                    rng.uniform(0.3, 0.6),
                )
            )
    a = np.array(rows)
    return Detections.from_arrays(
        a[:, 0],
        a[:, 1],
        a[:, 2],
        diameter_nm=a[:, 3],
        intensity=a[:, 4],
        score=a[:, 5],
        pixel_size_nm=pixel_size_nm,
        frame_shape=shape,
        n_frames=n_frames,
    )
