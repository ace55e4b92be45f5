"""The pipeline's PUB socket: what dashboards and loggers subscribe to.

PUB never blocks the pipeline: with a small send high-water mark, messages for a subscriber
that does not keep up are dropped (it sees the newest state when it drains), and sends use
NOBLOCK so even a full queue costs nothing. Messages are the pipeline's multipart JSON +
buffers (`nptrack.pipeline.messages`), topic = the message kind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zmq

from nptrack.pipeline.messages import Message, MessageError, decode, encode

__all__ = ["PUBLISH_HWM", "Publisher", "Subscriber"]

log = logging.getLogger(__name__)
PUBLISH_HWM = 16  # messages queued per subscriber before new ones are dropped


class Publisher:
    """A bound PUB socket; `send` is safe to call from one thread at a time (a lock guards it).

    Parameters
    ----------
    address : str
        ZeroMQ endpoint to bind, e.g. ``tcp://127.0.0.1:5557``.
    hwm : int
        Send high-water mark (messages per subscriber).
    """

    def __init__(self, address: str, *, hwm: int = PUBLISH_HWM) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.bind(address)
        except zmq.ZMQError:
            self._sock.close(linger=0)
            self._ctx.term()
            raise
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self.sent = 0  # handed to ZeroMQ (which drops, per subscriber, beyond the HWM)

    @classmethod
    def open(cls, address: str, *, notify: Callable[[str], None]) -> Publisher | None:
        """Bind, or tell `notify` why not and return None (the session runs without it)."""
        try:
            pub = cls(address)
        except zmq.ZMQError as exc:
            notify(f"dashboard publishing disabled: cannot bind {address}: {exc}")
            return None
        notify(f"publishing live results on {pub.address}")
        return pub

    def send(self, message: Message) -> bool:
        """Publish without blocking (a subscriber that does not keep up misses messages)."""
        parts = encode(message)
        with self._lock:
            try:
                self._sock.send_multipart([message.kind.encode(), *parts], flags=zmq.NOBLOCK,
                                          copy=False)  # fmt: skip
            except zmq.Again:  # PUB drops silently at the HWM; kept for other socket options
                return False
            self.sent += 1
            return True

    def close(self) -> None:
        """Close the socket (linger 0: nothing waits for slow subscribers)."""
        with self._lock:
            self._sock.close(linger=0)
            self._ctx.term()


class Subscriber:
    """A SUB socket on a pipeline's PUB address; `drain` returns what has arrived.

    Parameters
    ----------
    address : str
        The publisher's endpoint (``tcp://HOST:PORT``).
    kinds : sequence of str, optional
        Message kinds to receive (default: all).
    hwm : int
        Receive high-water mark: a subscriber that stalls holds at most this many messages.
    """

    def __init__(self, address: str, *, kinds: tuple[str, ...] = (), hwm: int = 64) -> None:
        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        for kind in kinds or ("",):
            self.sock.setsockopt(zmq.SUBSCRIBE, kind.encode())
        self.sock.connect(address)

    def drain(self, *, limit: int = 10_000, timeout_ms: int = 0) -> list[Message]:
        """Every message waiting now (waiting up to `timeout_ms` for the first)."""
        out: list[Message] = []
        if timeout_ms and not self.sock.poll(timeout_ms, zmq.POLLIN):
            return out
        while len(out) < limit:
            try:
                parts = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                out.append(decode(parts[1:]))
            except MessageError as exc:  # another version's publisher: skip, do not die
                log.warning("ignored a message: %s", exc)
        return out

    def close(self) -> None:
        self.sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
