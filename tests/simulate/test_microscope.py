"""The simulated microscope: partial files look partial until done, stacks grow readably,
the threaded player stops and reports errors, outputs are reproducible, the CLI works."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from nptrack.cli import main
from nptrack.io.complete import is_complete
from nptrack.io.read import read_frames
from nptrack.simulate.microscope import SimulatedMicroscope, encode_frame, play
from nptrack.simulate.write import write_images, write_sequence

FORMATS = ["tif", "emd", "mrc"]


def _frames(n: int, shape: tuple[int, int] = (96, 128)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.poisson(100.0 * (k + 1), shape).astype(np.float32) for k in range(n)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunked_files_are_incomplete_until_done(tmp_path: Path, fmt: str) -> None:
    partial = 0
    steps = list(play(_frames(2), tmp_path, pixel_size_nm=0.25, format=fmt, chunks=5))
    # replay, checking between the writes this time
    for step in play(_frames(2), tmp_path / "b", pixel_size_nm=0.25, format=fmt, chunks=5):
        assert is_complete(step.path) == step.done, step
        partial += not step.done
    assert partial == 8 and len(steps) == 10
    for k, frame in enumerate(_frames(2)):
        (read,) = read_frames(tmp_path / "b" / f"frame_{k:04d}.{fmt}")
        assert read.pixel_size_nm == pytest.approx((0.25, 0.25), rel=1e-6)
        np.testing.assert_array_equal(read.data, frame)


@pytest.mark.parametrize("fmt", FORMATS)
def test_renamed_files_appear_complete(tmp_path: Path, fmt: str) -> None:
    for step in play(_frames(2), tmp_path, pixel_size_nm=0.5, format=fmt, mode="rename"):
        final = tmp_path / f"frame_{step.index:04d}.{fmt}"
        if step.done:
            assert step.path == final and is_complete(final)
        else:
            assert step.path.suffix == ".part" and not final.exists()
            assert not is_complete(step.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"frame_0000.{fmt}", f"frame_0001.{fmt}"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_stack_grows_readable_frame_by_frame(tmp_path: Path, fmt: str) -> None:
    frames = _frames(3)
    for step in play(frames, tmp_path, pixel_size_nm=0.1, format=fmt, mode="stack", chunks=3):
        if step.index == 0 and not step.done:  # the first section of an MRC, cut short
            assert not is_complete(step.path)
        if step.done:
            assert is_complete(step.path)
            read = read_frames(step.path)
            assert len(read) == step.index + 1
            assert read[0].pixel_size_nm == pytest.approx((0.1, 0.1), rel=1e-5)
            np.testing.assert_array_equal(read[-1].data, frames[step.index])


def test_uint16_frames_round_trip(tmp_path: Path) -> None:
    image = np.array([[0.4, 70000.0], [-3.0, 12.6]], np.float32).repeat(8, 0).repeat(8, 1)
    list(play([image], tmp_path, pixel_size_nm=1.0, format="tif", dtype="uint16"))
    (read,) = read_frames(tmp_path / "frame_0000.tif")
    assert read.data[0, 0] == 0 and read.data[0, -1] == 65535 and read.data[-1, -1] == 13


def test_threaded_microscope_keeps_cadence_and_stops(tmp_path: Path) -> None:
    def endless() -> Iterator[np.ndarray]:
        while True:
            yield _frames(1, (32, 32))[0]

    start = time.monotonic()
    with SimulatedMicroscope(
        endless(), tmp_path, pixel_size_nm=0.2, cadence_s=0.05, chunks=3, chunk_interval_s=0.005
    ) as scope:
        assert scope.wait_for(4, timeout=10)
        elapsed = time.monotonic() - start
    assert elapsed >= 0.15  # frames 0..3 start at 0, 50, 100, 150 ms
    assert not scope.running
    done = [s.path for s in scope.written]
    assert len(done) >= 4 and all(is_complete(p) for p in done)
    assert len(list(tmp_path.glob("frame_*.tif"))) <= len(done) + 1  # at most one cut short


def test_threaded_microscope_reraises_worker_errors(tmp_path: Path) -> None:
    def broken() -> Iterator[np.ndarray]:
        yield _frames(1, (32, 32))[0]
        raise RuntimeError("detector on fire")

    scope = SimulatedMicroscope(broken(), tmp_path, pixel_size_nm=0.2).start()
    with pytest.raises(RuntimeError, match="detector on fire"):
        scope.join(timeout=10)
    stop = threading.Event()
    stop.set()
    assert list(play(_frames(2), tmp_path / "x", pixel_size_nm=0.2, stop=stop)) == []


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_same_seed_same_files_different_seed_different(tmp_path: Path) -> None:
    for fmt in ("tif", "emd"):
        a = write_sequence(
            tmp_path / f"a{fmt}",
            config="table1",
            frames=3,
            seed=3,
            format=fmt,
            masks=True,
            progress=False,
        )
        b = write_sequence(
            tmp_path / f"b{fmt}",
            config="table1",
            frames=3,
            seed=3,
            format=fmt,
            masks=True,
            progress=False,
        )
        c = write_sequence(
            tmp_path / f"c{fmt}",
            config="table1",
            frames=3,
            seed=4,
            format=fmt,
            masks=True,
            progress=False,
        )
        assert _tree(a) == _tree(b)
        ta, tc = _tree(a), _tree(c)
        assert ta.keys() == tc.keys()
        assert all(ta[k] != tc[k] for k in ta if k.startswith("frames/"))
        assert ta["ground_truth.csv"] != tc["ground_truth.csv"]
    ia = write_images(tmp_path / "ia", n=2, config="bf_gold", seed=1, progress=False)
    ib = write_images(tmp_path / "ib", n=2, config="bf_gold", seed=1, progress=False)
    assert _tree(ia) == _tree(ib)


def test_cli_simulate_images_and_sequence(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["simulate", "images", str(tmp_path / "img"), "--n", "2"])
    assert res.exit_code == 0, res.output
    mask = cv2.imread(str(tmp_path / "img" / "masks" / "sim_0001.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint16
    rows = (tmp_path / "img" / "particles.csv").read_text().splitlines()
    ids = {int(r.split(",")[1]) for r in rows[1:] if r.startswith("sim_0001")}
    assert ids == set(np.unique(mask).tolist()) - {0} and len(ids) > 20
    (img,) = read_frames(tmp_path / "img" / "images" / "sim_0001.tif")
    assert img.pixel_size_nm == pytest.approx((0.390625, 0.390625), rel=1e-6)

    out = tmp_path / "seq"
    args = ["simulate", "sequence", str(out), "--frames", "3", "--format", "mrc", "--mode", "stack"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {
        "frames",
        "ground_truth.csv",
        "events.csv",
        "transforms_truth.csv",
        "sequence.json",
    }
    assert len(read_frames(out / "frames" / "frame_stack.mrc")) == 3
    header = (out / "ground_truth.csv").read_text().splitlines()[0]
    assert header == "frame,id,x,y,diameter_nm,intensity,layer"

    res = runner.invoke(main, ["simulate", "sequence", str(out), "--preset", "nope"])
    assert res.exit_code == 1 and "unknown simulation preset 'nope'" in res.output
    assert "nm" in runner.invoke(main, ["simulate", "images", "--help"]).output


def test_encode_frame_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        encode_frame(np.zeros((4, 4), np.float32), pixel_size_nm=1.0, format="png")  # type: ignore[arg-type]
