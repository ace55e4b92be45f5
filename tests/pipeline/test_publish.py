"""The PUB socket never blocks or grows the pipeline, whatever subscribers do."""

from __future__ import annotations

import time

import numpy as np

from nptrack.pipeline.messages import Message
from nptrack.pipeline.publish import PUBLISH_HWM, Publisher, Subscriber


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def test_stalled_subscriber_costs_neither_memory_nor_blocking() -> None:
    pub = Publisher("tcp://127.0.0.1:*")
    stalled = Subscriber(pub.address, hwm=1)  # connects, never reads
    try:
        time.sleep(0.3)  # let the subscription arrive (PUB drops until it does)
        frame = np.ones((1024, 1024), np.float32)  # 4 MiB per message
        before = _rss_mb()
        for k in range(300):  # 1.2 GiB offered to a subscriber that takes nothing
            pub.send(Message("status", {"frame": k}, {"image": frame}))
        time.sleep(0.5)  # the I/O thread has moved what it can
        grown = _rss_mb() - before
    finally:
        stalled.close()
        pub.close()
    assert pub.sent == 300  # never refused, never blocked: PUB drops beyond its queue
    # Queued at most: the send HWM plus the subscriber's and the kernel's buffers, i.e. a few
    # tens of messages, not the 300 offered (1.2 GiB).
    assert grown < (PUBLISH_HWM + 16) * 4, grown


def test_live_subscriber_receives_newest_state() -> None:
    pub = Publisher("tcp://127.0.0.1:*")
    sub = Subscriber(pub.address, kinds=("status",))
    try:
        time.sleep(0.3)
        for k in range(5):
            pub.send(Message("status", {"frame": k}, {"x": np.arange(k, dtype=float)}))
            pub.send(Message("tracks", {"version": k}))  # filtered out by the subscription
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            got += sub.drain(timeout_ms=100)
    finally:
        sub.close()
        pub.close()
    assert [m.fields["frame"] for m in got] == list(range(5))
    assert all(m.kind == "status" for m in got)
    np.testing.assert_array_equal(got[-1].arrays["x"], np.arange(4.0))
