"""`centre_in_field`: is a particle cut by the image border centred inside the field?"""

from __future__ import annotations

import numpy as np
import pytest

from nptrack.measure import centre_in_field


def _disk(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _on_each_border(mask: np.ndarray) -> list[np.ndarray]:
    """The same cut disk at the left, right, top and bottom border."""
    return [mask, mask[:, ::-1], mask.T, mask.T[::-1]]


@pytest.mark.parametrize("r", [4.0, 6.0])
@pytest.mark.parametrize("cy", [20.0, 20.3, 20.5])
@pytest.mark.parametrize(("cx", "inside"), [(-2.5, False), (-1.25, False), (0.5, True),
                                            (1.0, True), (2.0, True)])  # fmt: skip
def test_cut_disks_by_their_true_centre(r: float, cy: float, cx: float, inside: bool) -> None:
    # The field's edge is at x = -0.5 (the edge of pixel 0): a centre at -1.25 is 0.75 px out.
    for mask in _on_each_border(_disk((40, 40), cx, cy, r)):
        assert centre_in_field(mask.astype(np.int32)).tolist() == [inside]


def test_digitised_chord_does_not_fool_it() -> None:
    # Centre 0.5 px outside a disk of radius 4: pixel columns 0-3 are in (depth 4 px), the
    # chord at column 0 covers 7 rows. The bounding-box rule (inside when the depth is at
    # least half the extent along the border) takes it; the fitted outline does not.
    lab = _disk((40, 40), -1.0, 20.0, 4.0).astype(np.int32)
    ys, xs = np.nonzero(lab)
    assert xs.max() + 1 >= (ys.max() - ys.min() + 1) / 2
    assert centre_in_field(lab).tolist() == [False]


def test_several_particles_each_judged_alone() -> None:
    lab = np.zeros((48, 64), np.int32)
    lab[_disk(lab.shape, 20.0, 24.0, 5.0)] = 1  # inside, not touching the border
    lab[_disk(lab.shape, 64.5, 10.0, 5.0)] = 2  # centre 1 px beyond the right edge
    lab[_disk(lab.shape, 40.0, 46.0, 5.0)] = 3  # centre 1.5 px inside the bottom edge
    lab[_disk(lab.shape, -1.5, -1.5, 6.0)] = 4  # corner, centre outside both edges
    assert centre_in_field(lab).tolist() == [True, False, True, False]
    # a label with no pixels stays True (nothing to drop) and keeps the others' places
    lab[lab == 2] = 0
    assert centre_in_field(lab).tolist() == [True, True, True, False]


def test_tiny_border_regions_fall_back_to_the_disk_rule() -> None:
    lab = np.zeros((20, 20), np.int32)
    lab[0, 5] = 1  # one pixel: 4 outline points, too few to fit; depth 1 >= 1 / 2
    lab[8:11, 0] = 2  # a 3-pixel sliver along the border: depth 1 < 3 / 2
    assert centre_in_field(lab).tolist() == [True, False]


def test_fit_circle_recovers_arcs_and_refuses_lines() -> None:
    from nptrack.measure.props import fit_circle

    rng = np.random.default_rng(3)
    for span_deg in (90, 180, 300):
        theta = np.radians(np.linspace(0, span_deg, 40))
        pts = np.column_stack([12.3 + 7.0 * np.sin(theta), -4.2 + 7.0 * np.cos(theta)])
        pts += rng.normal(0, 0.1, pts.shape)
        cy, cx, r = fit_circle(pts)
        assert abs(cy - 12.3) < 0.15 and abs(cx + 4.2) < 0.15 and abs(r - 7.0) < 0.1, span_deg
    # The geometric steps matter on a short noisy arc: the algebraic fit alone is pulled in.
    theta = np.radians(np.linspace(0, 90, 40))
    pts = np.column_stack([7.0 * np.sin(theta), 7.0 * np.cos(theta)])
    pts += rng.normal(0, 0.3, pts.shape)
    geometric, algebraic = fit_circle(pts), fit_circle(pts, iterations=0)
    assert abs(geometric[2] - 7.0) < abs(algebraic[2] - 7.0)
    line = np.column_stack([np.arange(10.0), 2.0 * np.arange(10.0)])
    assert np.isnan(fit_circle(line)[0])


@pytest.mark.parametrize("r", [4.0, 6.0, 9.0])
def test_cut_particles_are_placed_at_their_centre(r: float) -> None:
    # The centroid of the visible part of a cut disk lies inside its centre by up to a
    # radius; the fitted circle puts it back within ~0.5 px. Centres beyond the edge are
    # put on it (-0.5).
    from nptrack.measure.props import measure_particles

    rng = np.random.default_rng(int(r))
    for cx in (0.5, 1.0, -1.5):
        errors, centroid_errors = [], []
        for mask in _on_each_border(_disk((48, 48), cx, 20.3, r)):
            lab = mask.astype(np.int32)
            img = 100.0 * mask + rng.normal(0.0, 5.0, mask.shape)
            fitted = measure_particles(lab, img)
            plain = measure_particles(lab, img, fit_border_centres=False)
            assert fitted["border"][0] == 1
            # where the disk's centre went under flip / transpose
            true = {0: (cx, 20.3), 1: (47 - cx, 20.3), 2: (20.3, cx), 3: (20.3, 47 - cx)}
            k = len(errors)
            tx, ty = true[k]
            tx, ty = np.clip(tx, -0.5, 47.5), np.clip(ty, -0.5, 47.5)
            errors.append(np.hypot(fitted["x"][0] - tx, fitted["y"][0] - ty))
            centroid_errors.append(np.hypot(plain["x"][0] - tx, plain["y"][0] - ty))
        assert max(errors) < 0.6, (r, cx, errors)
        assert min(centroid_errors) > max(0.5, 2 * max(errors)), (r, cx, centroid_errors)


def test_particles_inside_keep_their_weighted_centroid() -> None:
    from nptrack.measure.props import measure_particles

    lab = _disk((40, 40), 20.2, 18.7, 5.0).astype(np.int32)
    img = lab * np.linspace(50.0, 150.0, 40)[None, :]  # brighter to the right
    a = measure_particles(lab, img)
    b = measure_particles(lab, img, fit_border_centres=False)
    assert a["border"][0] == 0 and a["x"][0] == b["x"][0] and a["y"][0] == b["y"][0]
    assert a["x"][0] > 20.2 + 0.1  # intensity-weighted, not the circle's centre
