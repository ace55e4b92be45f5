"""Watch an acquisition folder and hand over each frame once it is completely written.

watchdog events (inotify, or polling for network shares) are only hints: a file is taken when
its size and modification time have been stable for ``stable_s`` seconds *and*
`nptrack.io.complete.is_complete` accepts its structure. A periodic full rescan reconciles missed
events and restarts an observer that died (network shares drop). Growing stacks hand over only
their new frames; files that never complete, are corrupt or hold no image are reported once
and skipped.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nptrack.config import WatchConfig
from nptrack.frames import Frame
from nptrack.io.complete import is_complete
from nptrack.io.errors import IncompleteFileError, ReadError
from nptrack.io.read import natural_key, read_frames

__all__ = ["FolderWatcher", "WatchProblem"]

log = logging.getLogger(__name__)

# Names acquisition software uses while writing, before the final rename.
_TEMPORARY = ("*.tmp", "*.part", "*.partial", "~*", ".*", "*.crdownload")


@dataclass
class WatchProblem:
    """A file that was reported and skipped."""

    path: Path
    reason: str


@dataclass
class _FileState:
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time of the last observed change
    first_seen: float
    frames_taken: int = 0
    taken_version: tuple[int, int] | None = None  # (size, mtime) whose frames were taken
    reported_version: tuple[int, int] | None = None  # (size, mtime) already reported


class FolderWatcher:
    """Hand over the frames of complete files appearing in `folder`.

    Parameters
    ----------
    folder : path-like
        The acquisition folder (not recursive).
    config : WatchConfig
        Patterns, polling, stability and rescan periods, give-up time.
    already_taken : iterable of str, optional
        Frame sources (``Frame.source``) handed over by an earlier run; they are skipped so a
        resumed session counts nothing twice.
    clock : callable, optional
        Monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        config: WatchConfig | None = None,
        already_taken: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: no such folder to watch")
        self.config = config or WatchConfig()
        self._clock = clock
        self._taken = set(already_taken)
        self._files: dict[Path, _FileState] = {}
        self._hints: set[Path] = set()
        self._hints_lock = threading.Lock()
        self._observer = None
        self._last_rescan = -float("inf")
        self.problems: list[WatchProblem] = []
        self.read_errors = 0  # files found truncated by the reader after the completeness check

    # -- watchdog ---------------------------------------------------------------------------
    def _wanted(self, path: Path) -> bool:
        name = path.name
        if any(fnmatch.fnmatch(name, pat) for pat in _TEMPORARY):
            return False
        return any(fnmatch.fnmatch(name.lower(), pat.lower()) for pat in self.config.patterns)

    def _hint(self, path: str | bytes) -> None:
        p = Path(path.decode() if isinstance(path, bytes) else path)
        if self._wanted(p):
            with self._hints_lock:
                self._hints.add(p)

    def start_observer(self) -> None:
        """Start (or restart) the watchdog observer; events only speed up discovery."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):  # type: ignore[no-untyped-def]
                if not event.is_directory:
                    watcher._hint(getattr(event, "dest_path", "") or event.src_path)
                    watcher._hint(event.src_path)

        self.stop_observer()
        if self.config.poll:
            observer = PollingObserver(timeout=self.config.poll_interval_s)
        else:
            observer = Observer()
        observer.schedule(Handler(), str(self.folder), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop_observer(self) -> None:
        """Stop the observer if it runs."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    # -- scanning ---------------------------------------------------------------------------
    def _candidates(self, now: float) -> set[Path]:
        with self._hints_lock:
            found, self._hints = self._hints, set()
        if now - self._last_rescan >= self.config.rescan_s:
            self._last_rescan = now
            found |= {p for p in self.folder.iterdir() if self._wanted(p)}
            if self._observer is not None and not self._observer.is_alive():
                log.warning("folder observer died; restarting it")
                self.start_observer()
        # Files seen before but not yet fully taken are re-examined on every scan.
        found |= {
            p
            for p, s in self._files.items()
            if s.reported_version is None and s.taken_version != (s.size, s.mtime_ns)
        }
        return found

    def _report(self, path: Path, state: _FileState, reason: str) -> None:
        version = (state.size, state.mtime_ns)
        if state.reported_version != version:
            state.reported_version = version
            self.problems.append(WatchProblem(path, reason))
            log.warning("skipped %s: %s", path, reason)

    def scan(self) -> list[Frame]:
        """One pass: the new frames of every file that is now complete, in acquisition order.

        Frames are ordered by acquisition time where the files record it, else by natural
        file-name order; frames of one stack stay in their order.
        """
        now = self._clock()
        ready: list[tuple[Path, list[Frame]]] = []
        for path in self._candidates(now):
            try:
                stat = path.stat()
            except FileNotFoundError:  # renamed or deleted meanwhile
                self._files.pop(path, None)
                continue
            state = self._files.get(path)
            if state is None or (state.size, state.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                if state is None:
                    state = _FileState(stat.st_size, stat.st_mtime_ns, now, now)
                    self._files[path] = state
                else:
                    state.size, state.mtime_ns, state.changed_at = (
                        stat.st_size,
                        stat.st_mtime_ns,
                        now,
                    )
                    state.reported_version = None  # a new version deserves a new look
                if self.config.stable_s > 0:
                    continue
            if state.taken_version == (state.size, state.mtime_ns):
                continue  # nothing new since its frames were taken
            if now - state.changed_at < self.config.stable_s:
                continue
            if not is_complete(path) and path.suffix.lower() != ".ser":
                if now - state.first_seen > self.config.give_up_s:
                    self._report(path, state, f"not complete after {self.config.give_up_s:g} s")
                continue
            try:
                frames = read_frames(path)
            except IncompleteFileError as exc:
                self.read_errors += 1
                if now - state.first_seen > self.config.give_up_s:
                    self._report(path, state, exc.reason)
                continue
            except ReadError as exc:  # not an image, unsupported, corrupt: refused, not half-read
                self._report(path, state, exc.reason)
                continue
            new = [f for f in frames[state.frames_taken :] if f.source not in self._taken]
            state.frames_taken = len(frames)
            state.taken_version = (state.size, state.mtime_ns)
            if new:
                self._taken.update(f.source for f in new)
                ready.append((path, new))
        ready.sort(
            key=lambda item: (
                item[1][0].time_s is None,
                item[1][0].time_s or 0.0,
                natural_key(item[0]),
            )
        )
        return [frame for _, frames in ready for frame in frames]

    def run(
        self,
        deliver: Callable[[Frame], None],
        stop: threading.Event,
        *,
        period_s: float = 0.2,
        use_observer: bool = True,
        idle_s: float | None = None,
    ) -> None:
        """Scan until `stop` is set, passing every new frame to `deliver` (in order).

        With `idle_s`, also return once no new frame has come for `idle_s` seconds (counted
        from the start, then from the last frame).
        """
        if use_observer:
            self.start_observer()
        last_frame_at = self._clock()
        try:
            while not stop.is_set():
                for frame in self.scan():
                    deliver(frame)
                    last_frame_at = self._clock()
                    if stop.is_set():
                        break
                if idle_s is not None and self._clock() - last_frame_at >= idle_s:
                    log.info("no new frame for %g s: finishing", idle_s)
                    return
                stop.wait(period_s)
        finally:
            self.stop_observer()
