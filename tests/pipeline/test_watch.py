"""Folder watcher: chunked writes, temp-then-rename, growing stacks, bad files, resume."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import tifffile

from nptrack.config import WatchConfig
from nptrack.pipeline.watch import FolderWatcher


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _tiff_bytes(tmp: Path, value: int, shape: tuple[int, int] = (64, 64)) -> bytes:
    path = tmp / f"_src{value}.tif"
    tifffile.imwrite(
        path,
        np.full(shape, value, np.uint16),
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"unit": "um"},
    )
    data = path.read_bytes()
    path.unlink()
    return data


def make(folder: Path, **cfg: float) -> tuple[FolderWatcher, FakeClock]:
    clock = FakeClock()
    config = WatchConfig(stable_s=1.0, rescan_s=0.001, give_up_s=10.0, **cfg)
    return FolderWatcher(folder, config=config, clock=clock), clock


def test_chunked_write_is_taken_only_when_complete(tmp_path: Path) -> None:
    folder = tmp_path / "acq"
    folder.mkdir()
    watcher, clock = make(folder)
    data = _tiff_bytes(tmp_path, 7)
    target = folder / "frame_0001.tif"
    read_errors = 0
    for k in range(1, 5):  # four chunks, each followed by a pause longer than stable_s
        target.write_bytes(data[: len(data) * k // 4])
        for _ in range(3):
            clock.t += 0.6
            got = watcher.scan()
            if k < 4:
                read_errors += len(got)  # anything handed over before the end is an error
    assert read_errors == 0
    clock.t += 2
    frames = watcher.scan() or got
    assert len(frames) == 1 and float(frames[0].data.mean()) == 7.0
    assert watcher.problems == []
    clock.t += 2
    assert watcher.scan() == []  # never twice


def test_temp_then_rename_and_order(tmp_path: Path) -> None:
    folder = tmp_path / "acq"
    folder.mkdir()
    watcher, clock = make(folder)
    for value in (10, 2, 1):
        tmp = folder / f"frame_{value}.tif.tmp"
        tmp.write_bytes(_tiff_bytes(tmp_path, value))
    assert watcher.scan() == []
    for value in (10, 2, 1):
        (folder / f"frame_{value}.tif.tmp").rename(folder / f"frame_{value}.tif")
    clock.t += 0.01
    watcher.scan()
    clock.t += 1.5
    frames = watcher.scan()
    assert [int(f.data[0, 0]) for f in frames] == [1, 2, 10]  # natural name order


def test_growing_stack_hands_over_new_frames(tmp_path: Path) -> None:
    folder = tmp_path / "acq"
    folder.mkdir()
    watcher, clock = make(folder)
    stack = folder / "series.tif"
    taken = []
    for k in range(3):
        tifffile.imwrite(stack, np.full((32, 32), k, np.uint16), append=True)
        watcher.scan()
        clock.t += 1.5
        taken += watcher.scan()
    assert [int(f.data[0, 0]) for f in taken] == [0, 1, 2]
    assert [f.source.endswith(f"#{k}") for k, f in enumerate(taken)][1:] == [True, True]


def test_bad_files_reported_once_and_skipped(tmp_path: Path, formats_dir: Path) -> None:
    folder = tmp_path / "acq"
    folder.mkdir()
    watcher, clock = make(folder)
    shutil.copy(formats_dir / "08_carbon.dm3", folder / "spectrum.dm3")
    whole = (formats_dir / "test_STEM_image.dm3").read_bytes()
    (folder / "truncated.dm3").write_bytes(whole[: len(whole) // 2])
    (folder / "corrupt.tif").write_bytes(b"II*\x00" + b"\xff" * 400)
    (folder / "good.dm3").write_bytes(whole)
    watcher.scan()
    clock.t += 1.5
    frames = watcher.scan()
    assert [Path(f.source).name for f in frames] == ["good.dm3"]
    for _ in range(3):
        clock.t += 5  # past give_up_s: the truncated file is reported as never complete
        assert watcher.scan() == []
    reported = sorted(p.path.name for p in watcher.problems)
    assert reported == ["corrupt.tif", "spectrum.dm3", "truncated.dm3"]


def test_resume_skips_frames_already_taken(tmp_path: Path) -> None:
    folder = tmp_path / "acq"
    folder.mkdir()
    for value in (1, 2, 3):
        (folder / f"f{value}.tif").write_bytes(_tiff_bytes(tmp_path, value))
    clock = FakeClock()
    config = WatchConfig(stable_s=0.0, rescan_s=0.001)
    done = [str(folder / "f1.tif"), str(folder / "f2.tif")]
    watcher = FolderWatcher(folder, config=config, already_taken=done, clock=clock)
    frames = watcher.scan()
    assert [int(f.data[0, 0]) for f in frames] == [3]


def test_run_thread_with_real_observer(tmp_path: Path) -> None:
    folder = tmp_path / "acq"
    folder.mkdir()
    config = WatchConfig(stable_s=0.2, rescan_s=0.5, poll=True, poll_interval_s=0.1)
    watcher = FolderWatcher(folder, config=config)
    got: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=watcher.run,
        args=(lambda f: got.append(int(f.data[0, 0])), stop),
        kwargs={"period_s": 0.05},
    )
    thread.start()
    try:
        for value in (5, 6):
            (folder / f"x{value}.tif").write_bytes(_tiff_bytes(tmp_path, value))
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert sorted(got) == [5, 6]
