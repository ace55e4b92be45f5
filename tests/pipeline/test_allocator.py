"""The session process's malloc arenas: limited to one, the threads share it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nptrack.pipeline import allocator

pytestmark = pytest.mark.skipif(allocator._libc() is None, reason="glibc only")

# A fresh interpreter: four threads allocate at once, then glibc lists its arenas.
SCRIPT = textwrap.dedent(
    """
    import ctypes, sys, threading
    from nptrack.pipeline.allocator import limit_malloc_arenas
    limit_malloc_arenas(int(sys.argv[1]))
    start = threading.Barrier(4)
    def work():
        start.wait()
        kept = [bytearray(2000) for _ in range(2000)]
        start.wait()  # all four hold their memory here
    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena k:" block per arena, on stderr
    """
)


def _arenas(limit: int) -> int:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(limit)], capture_output=True, text=True, check=True
    )
    return sum(line.startswith("Arena ") for line in run.stderr.splitlines())


def test_one_arena_is_shared_by_every_thread() -> None:
    assert _arenas(0) > 1  # glibc's default: threads take arenas of their own
    assert _arenas(1) == 1


def test_no_limit_and_no_glibc_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    assert allocator.limit_malloc_arenas(0) is False
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    assert allocator.limit_malloc_arenas(1) is False
    allocator.release_freed_memory()  # does nothing, raises nothing


def test_a_session_sets_the_configured_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from nptrack.config import load_config
    from nptrack.pipeline import session

    asked: list[int] = []
    hugepages: list[bool] = []
    monkeypatch.setattr(session, "limit_malloc_arenas", asked.append)
    monkeypatch.setattr(session, "numpy_hugepages", hugepages.append)
    config = load_config(None, ["pipeline.malloc_arenas=2", "pipeline.numpy_hugepages=true"])
    session.run_session(
        lambda deliver, stop: None,  # a source with no frames
        tmp_path / "session",
        config=config,
        command="track",
        pixel_size_nm=0.2,
        background_reoptimize=False,
        make_detector=lambda: lambda frame, meta: {},
    )
    assert asked == [2]
    assert hugepages == [True]


def test_numpy_hugepages_switch_reports_the_previous_setting() -> None:
    before = allocator.numpy_hugepages(False)
    if before is None:
        pytest.skip("this NumPy has no huge-page switch")
    try:
        assert allocator.numpy_hugepages(True) is False
        assert allocator.numpy_hugepages(True) is True
    finally:
        allocator.numpy_hugepages(before)
