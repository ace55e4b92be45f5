"""Separation lines: touching particles taught as separate blobs, and given back after."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from nptrack.measure import detect_particles
from nptrack.measure.split import fill_separation_lines
from nptrack.segment.data import DataConfig, make_batch, separation_target, shapes_sample


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _touching_pair(shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Two discs of radius 9 px that overlap; the right one drawn on top."""
    ids = np.zeros(shape, np.int32)
    ids[_disc(shape, 32, 22, 9)] = 1
    ids[_disc(shape, 32, 38, 9)] = 2
    ids[_disc(shape, 12, 52, 5)] = 3  # alone
    return ids


def test_line_between_touching_particles_only() -> None:
    ids = _touching_pair()
    target, weight = separation_target(ids, separation_px=1, weight=5.0)
    line = (ids > 0) & (target == 0)
    # The union is one region; with the line it falls into the two particles (and the third).
    assert ndi.label(ids > 0)[1] == 2 and ndi.label(target > 0)[1] == 3
    # The line runs along the contact: 1 px on each side of it, nothing at the lone disc.
    _, xs = np.nonzero(line)
    assert set(np.unique(ids[line])) == {1, 2} and xs.min() >= 28 and xs.max() <= 32
    assert not line[ids == 3].any()
    assert np.all(weight[line] == 5.0) and np.all(weight[~line] == 1.0)
    plain, w1 = separation_target(ids, separation_px=0, weight=5.0)
    assert np.array_equal(plain, (ids > 0).astype(np.float32)) and np.all(w1 == 1.0)


def test_fill_gives_the_line_back_and_keeps_real_gaps() -> None:
    ids = _touching_pair()
    target, _ = separation_target(ids, separation_px=1, weight=5.0)
    labels = ndi.label(target > 0)[0]
    filled, touching = fill_separation_lines(labels, separation_px=1)
    # The line is a particle again (but for its middle where it is 3 px wide); what is filled
    # besides is the notch where the outlines meet, true background but within 2 px of both
    # particles (no resolvable gap).
    assert ((filled == 0) & (ids > 0)).sum() <= 6  # middles of the 3 rows where it is 3 px wide
    extra = (filled > 0) & (ids == 0)
    both = [ndi.binary_dilation(ids == k, np.ones((5, 5))) for k in (1, 2)]
    assert 0 < extra.sum() <= 16 and np.all((both[0] & both[1])[extra])
    lone = labels[12, 52]
    assert set(touching.tolist()) == {labels[32, 22], labels[32, 38]} and lone not in touching
    assert np.array_equal(filled == lone, labels == lone)
    # A lone particle does not grow; a 3 px gap between two particles stays background.
    apart = np.zeros((40, 60), np.int32)
    apart[10:30, 5:25] = 1
    apart[10:30, 28:48] = 2  # columns 25-27 are a real gap
    again, none = fill_separation_lines(apart, separation_px=1)
    assert np.array_equal(again, apart) and none.size == 0


def test_detect_particles_fills_lines_of_a_separation_model() -> None:
    ids = _touching_pair()
    target, _ = separation_target(ids, separation_px=1, weight=5.0)
    prob = np.where(target > 0, 0.95, 0.05).astype(np.float32)
    image = np.where(ids > 0, 10.0, 1.0).astype(np.float32)
    plain = detect_particles(prob, image, contrast="bright")
    filled = detect_particles(prob, image, contrast="bright", separation_px=1)
    assert plain.count == filled.count == 3
    area_true = np.sort(np.bincount(ids.ravel())[1:])
    area_plain = np.sort(np.bincount(plain.labels.ravel())[1:])
    area_filled = np.sort(np.bincount(filled.labels.ravel())[1:])
    # Without filling the pair lose their line (~5 % of their area); filled, they keep it.
    err_plain = np.abs(area_plain - area_true) / area_true
    err_filled = np.abs(area_filled - area_true) / area_true
    assert err_plain.max() > 0.05 and err_filled.max() < 0.5 * err_plain.max()
    # The score stays the model's confidence in its own pixels, not diluted by the lines.
    assert np.allclose(filled.columns["score"], 0.95)


def test_instances_and_batches_with_lines() -> None:
    rng = np.random.default_rng(5)
    _, ids = shapes_sample(
        128, diameter_px=(10.0, 20.0), coverage=(0.5, 0.6), overlay_probability=0.0, rng=rng,
        instances=True,
    )  # fmt: skip
    assert ids.dtype == np.int32 and ids.max() > 5
    cfg = DataConfig(tile_px=64, separation_px=1, separation_weight=4.0)
    x, y = make_batch(cfg, 4, rng=np.random.default_rng(2))
    assert x.shape == (4, 1, 64, 64) and y.shape == (4, 2, 64, 64)
    assert set(np.unique(y[:, 0])) <= {0.0, 1.0} and set(np.unique(y[:, 1])) <= {1.0, 4.0}
    assert np.all(y[:, 0][y[:, 1] == 4.0] == 0)  # line pixels are taught as background


def test_weighted_loss_counts_line_pixels_more() -> None:
    torch = pytest.importorskip("torch")
    from nptrack.segment.train import dice_bce_loss

    target = torch.zeros(1, 1, 8, 8)
    target[..., :4] = 1
    logits = torch.where(target > 0, 4.0, -4.0)
    logits[0, 0, 0, 5] = 4.0  # one confident error on a background pixel
    weight = torch.ones_like(target)
    plain = dice_bce_loss(logits, torch.cat([target, weight], 1), dice_weight=0.0)
    assert float(plain) == pytest.approx(float(dice_bce_loss(logits, target, dice_weight=0.0)))
    weight[0, 0, 0, 5] = 10.0  # the error sits on a separation line
    assert float(
        dice_bce_loss(logits, torch.cat([target, weight], 1), dice_weight=0.0)
    ) > 5 * float(plain)
