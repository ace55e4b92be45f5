"""The Registrar on short synthetic series: drift, failures, fallback, outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from nptrack.cli import main
from nptrack.config import RegisterConfig
from nptrack.frames import Frame
from nptrack.register import (
    FRAMES_COLUMNS,
    Registrar,
    compose,
    field_rms,
    frames_rows,
    identity,
    invert,
    map_points,
    register,
    register_series,
    support_mask,
)
from nptrack.register.incremental import _warp_mask_to
from tests.register._scenes import Scene, blobs, frame_map

SHAPE = (320, 320)


def _drifting_series(n: int = 8, *, seed: int = 0, max_step_px: float = 45.0):
    """Frames with drift steps up to `max_step_px`, ±0.5 % scale / shear, moving particles."""
    scene = Scene(SHAPE, seed=seed, n_particles=20, dose=10.0)
    rng = np.random.default_rng(seed)
    offset = np.zeros(2)
    frames, truths = [], []
    for t in range(n):
        if t:
            ang = rng.uniform(0, 2 * np.pi)
            step = rng.uniform(0.5, 1.0) * max_step_px
            offset = np.clip(offset + step * np.array([np.cos(ang), np.sin(ang)]), -80, 80)
            sx, sy, k = rng.uniform(-0.005, 0.005, 3)
            g = frame_map(offset, scale=(1 + sx, 1 + sy), shear=k, shape=SHAPE)
        else:
            g = scene.g0
        frames.append(scene.frame(g, particle_step_px=0.7 if t else 0.0))
        truths.append(scene.truth(g))
    return frames, truths


def test_drifting_series_within_budget() -> None:
    frames, truths = _drifting_series()
    results = register_series(frames)
    assert [r.index for r in results] == list(range(len(frames)))
    assert results[0].status == "ok" and np.array_equal(results[0].matrix, identity())
    errors = [field_rms(r.matrix, t, shape=SHAPE) for r, t in zip(results, truths, strict=True)]
    assert all(r.status == "ok" for r in results), [(r.status, r.detail) for r in results]
    assert all(r.reference == 0 for r in results)
    assert np.sqrt(np.mean(np.square(errors))) < 0.15, errors
    assert max(errors) < 0.3, errors


def test_noise_frame_fails_and_next_frame_recovers() -> None:
    frames, truths = _drifting_series(5, seed=1)
    rng = np.random.default_rng(5)
    frames[2] = rng.poisson(10.0, SHAPE).astype(np.float32)  # beam blanked: noise only
    reg = Registrar()
    results = [reg.update(f) for f in frames]
    assert [r.status for r in results] == ["ok", "ok", "failed", "ok", "ok"]
    # The failed frame keeps the previous transform and says why.
    np.testing.assert_array_equal(results[2].matrix, results[1].matrix)
    assert results[2].detail
    for k in (3, 4):
        assert field_rms(results[k].matrix, truths[k], shape=SHAPE) < 0.3
        assert results[k].reference == 0


def _evolving_series(n: int = 7):
    """The support changes into another one: frame 0 decorrelates, neighbours do not."""
    a = Scene(SHAPE, seed=11, n_particles=0)
    b = Scene(SHAPE, seed=12, n_particles=0)
    rng = np.random.default_rng(3)
    frames, truths = [], []
    for t in range(n):
        g = frame_map((6.0 * t, -4.0 * t), scale=(1 + 0.001 * t, 1.0), shape=SHAPE)
        w = t / (n - 1)
        clean = (1 - w) * a.frame(g, noise=False) + w * b.frame(g, noise=False)
        frames.append(rng.poisson(clean * 30.0).astype(np.float32))
        truths.append(a.truth(g))
    return frames, truths


def test_fallback_registers_to_previous_frame_and_composes_exactly() -> None:
    frames, truths = _evolving_series()
    config = RegisterConfig()
    reg = Registrar(config=config)
    results = [reg.update(f) for f in frames]
    degraded = [r for r in results if r.status == "degraded" and r.reference != 0]
    assert degraded, [(r.status, r.cc, r.detail) for r in results]
    assert all(r.status != "failed" for r in results)
    for r in degraded:
        k = r.reference
        assert k == r.index - 1 and "via frame" in r.detail
        prev = results[k]
        # Redo the pairwise registration the Registrar made: same inputs, same guess.
        guess = compose(invert(prev.matrix), results[r.index - 1].matrix)
        pair = register(frames[k], frames[r.index], initial=guess)
        np.testing.assert_allclose(r.matrix, compose(prev.matrix, pair.matrix), rtol=0, atol=1e-9)
        assert r.cc == pytest.approx(pair.cc)
    errors = [field_rms(r.matrix, t, shape=SHAPE) for r, t in zip(results, truths, strict=True)]
    assert max(errors) < 0.3, errors


def test_bad_frames_never_raise() -> None:
    frames, _ = _drifting_series(2, seed=2)
    reg = Registrar()
    reg.update(frames[0])
    good = reg.update(frames[1])
    for bad in (
        np.zeros((100, 100), np.float32),  # wrong shape
        np.full(SHAPE, np.nan, np.float32),
        np.zeros(SHAPE, np.float32),  # blank
    ):
        result = reg.update(bad)
        assert result.status == "failed" and result.detail
        np.testing.assert_array_equal(result.matrix, good.matrix)
    assert reg.count == 5


def test_disabled_and_explicit_anchor() -> None:
    frames, truths = _drifting_series(3, seed=3)
    off = Registrar(config=RegisterConfig(enabled=False))
    assert np.array_equal(off.update(frames[1]).matrix, identity())
    anchored = Registrar(anchor=frames[0])
    first = anchored.update(frames[2])  # registered to the given anchor, not made the anchor
    assert first.status == "ok"
    assert field_rms(first.matrix, truths[2], shape=SHAPE) < 0.3


def test_particle_mask_in_anchor_coordinates() -> None:
    scene = Scene(SHAPE, seed=13, n_particles=0, dose=50.0)
    rng = np.random.default_rng(13)
    xy = rng.uniform(30, 290, size=(40, 2))
    g = frame_map((9.5, -6.0), scale=(1.002, 0.998), shape=SHAPE)
    truth = scene.truth(g)
    glide = xy + np.array([4.0, 0.0])  # every particle glides 4 px: a false common motion
    anchor = scene.frame(scene.g0) + 50.0 * blobs(SHAPE, xy, 3.0, 2.0)
    moving = scene.frame(g) + 50.0 * blobs(SHAPE, map_points(glide, invert(truth)), 3.0, 2.0)
    # What a segmentation gives: particles of frame 0 and (mapped) of the previous frame.
    particles = (blobs(SHAPE, xy, 3.0, 1.0) > 0.05) | (blobs(SHAPE, glide, 3.0, 1.0) > 0.05)
    masked, plain = Registrar(), Registrar()
    for reg in (masked, plain):
        reg.update(anchor)
    with_mask = masked.update(moving, mask=support_mask(particles))
    without = plain.update(moving)
    assert field_rms(with_mask.matrix, truth, shape=SHAPE) < 0.1
    assert not np.allclose(with_mask.matrix, without.matrix, atol=1e-6)  # the mask was used
    ignored = Registrar(config=RegisterConfig(mask_particles=False))
    ignored.update(anchor)
    off = ignored.update(moving, mask=support_mask(particles))
    np.testing.assert_allclose(off.matrix, without.matrix, atol=1e-9)


def test_mask_follows_the_fallback_reference() -> None:
    mask = np.ones((50, 60), bool)
    mask[20:25, 30:35] = False  # a particle in anchor coordinates
    to_anchor = np.array([[1.0, 0.0, 7.0], [0.0, 1.0, -3.0]])  # frame k -> anchor
    seen = _warp_mask_to(mask, to_anchor)
    # Seen from frame k the particle sits at anchor position minus the shift.
    assert not seen[23:28, 23:28].any() and seen[20:25, 30:35].all()
    assert seen.dtype == bool and seen.shape == mask.shape


def test_frames_rows_follow_the_contract() -> None:
    data = np.zeros((8, 8), np.float32)
    frames = [
        Frame(data, (0.2, 0.2), 0, 0.0, "a.dm4"),
        Frame(data, (0.1, 0.4), 1, None, "b.dm4"),
        Frame(data, None, 2, 2.5, "c.dm4"),
    ]
    m = np.array([[1.001, 0.002, 3.5], [-0.001, 0.999, -2.25]])
    reg = Registrar()
    results = [reg.update(np.asarray(f.data)) for f in frames]  # blank frames: failed
    rows = frames_rows(frames, results)
    assert [tuple(r) for r in rows] == [FRAMES_COLUMNS] * 3
    assert rows[0]["pixel_size_nm"] == pytest.approx(0.2)
    assert rows[1]["pixel_size_nm"] == pytest.approx(0.2)  # geometric mean of (y, x)
    assert rows[2]["pixel_size_nm"] == "" and rows[1]["time_s"] == ""
    assert rows[1]["status"] == "failed"
    one = type(results[0])(0, m, 0.9, "ok", 0)
    row = frames_rows(frames[:1], [one])[0]
    assert [row[k] for k in ("a11", "a12", "tx", "a21", "a22", "ty")] == m.ravel().tolist()
    with pytest.raises(ValueError):
        frames_rows(frames, results[:2])


def test_register_command_writes_outputs(tmp_path: Path) -> None:
    frames, truths = _drifting_series(4, seed=4)
    folder = tmp_path / "series"
    folder.mkdir()
    for i, f in enumerate(frames):
        tifffile.imwrite(folder / f"frame_{i}.tif", f.astype(np.uint16))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["register", str(folder), "--out", str(out), "--set", "register.levels=4"]
    )
    assert result.exit_code == 0, result.output
    with (out / "frames.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == FRAMES_COLUMNS and len(rows) == 4
    for row, truth in zip(rows, truths, strict=True):
        m = np.array([[float(row[k]) for k in ("a11", "a12", "tx", "a21", "a22", "ty")]])
        assert field_rms(m.reshape(2, 3), truth, shape=SHAPE) < 0.3
        assert row["status"] == "ok" and row["source"].endswith(".tif")
    stack = tifffile.imread(out / "registered.tif")
    assert stack.shape == (4, *SHAPE) and stack.dtype == np.float32
    # Registered frames line up with frame 0 where they overlap (noisy pixels: SNR ≈ 1).
    inside = stack[3] > 0
    aligned = np.corrcoef(stack[0][inside], stack[3][inside])[0, 1]
    raw = np.corrcoef(frames[0].ravel(), frames[3].ravel())[0, 1]
    assert aligned > 0.3 and aligned > raw + 0.25
    assert (out / "drift.png").stat().st_size > 10_000


def test_register_command_reports_bad_config(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint16))
    result = CliRunner().invoke(
        main,
        [
            "register",
            str(tmp_path / "a.tif"),
            "--out",
            str(tmp_path / "o"),
            "--set",
            "register.levls=3",
        ],
    )
    assert result.exit_code == 1
    assert "levls" in result.output
