"""The C allocator of the session process (glibc and Linux only; elsewhere no-ops).

With glibc's default of up to 8 malloc arenas per core, the pipeline's threads (watcher,
register, detect, track, the executor's result thread) each allocate from their own arena,
and memory freed by another thread goes back to the arena it came from: over a long run the
arenas fragment, and the resident memory of the session rose in steps each time a
background track version was handed over (README, memory over a long run). One arena grows
less than half as much over 1,000 frames; the threads mostly hold the GIL while they
allocate, so they seldom contend for it.

NumPy asks Linux for transparent huge pages on its large arrays (``madvise``); the
remaining growth came in steps of exactly that size, 2 MiB. Without them the second half
of a 1,000-frame run sat at the level of its first half by the medians of its samples,
though one run still had a late 4.2 MiB step (README).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

#: mallopt parameter number of glibc's ``M_ARENA_MAX`` (malloc.h).
M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc has it, musl and other C libraries may not
    except (OSError, AttributeError):
        return None
    return libc


def limit_malloc_arenas(arenas: int) -> bool:
    """Let glibc's malloc use at most `arenas` arenas in this process from now on.

    Parameters
    ----------
    arenas : int
        0 leaves glibc's default (8 per core).

    Returns
    -------
    bool
        True when the limit was set (glibc), False otherwise.
    """
    if arenas <= 0:
        return False
    libc = _libc()
    if libc is None or not libc.mallopt(M_ARENA_MAX, int(arenas)):
        return False
    log.debug("malloc arenas limited to %d", arenas)
    return True


def numpy_hugepages(enabled: bool) -> bool | None:
    """Let NumPy ask for transparent huge pages on its large arrays, or not.

    The same switch as the environment variable ``NUMPY_MADVISE_HUGEPAGE``, for arrays
    allocated from now on.

    Returns
    -------
    bool or None
        The previous setting; None where this NumPy has no such switch.
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    return None if switch is None else bool(switch(bool(enabled)))


def release_freed_memory() -> None:
    """Give heap pages freed by Python back to the OS (glibc's ``malloc_trim``).

    Each background version handed back (columns of the whole history) is freed once
    stored, but glibc keeps the pages.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
