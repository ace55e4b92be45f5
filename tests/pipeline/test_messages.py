"""Messages: round trip through real ZeroMQ sockets, zero-copy, protocol errors caught."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from nptrack.pipeline.messages import PROTOCOL_VERSION, Message, MessageError, decode, encode


def test_round_trip_over_zmq() -> None:
    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        pull.bind("inproc://t")
        push = ctx.socket(zmq.PUSH)
        push.connect("inproc://t")
        image = np.random.default_rng(0).random((256, 300), dtype=np.float32)
        xy = np.arange(10, dtype=np.float64).reshape(5, 2)
        push.send_multipart(
            encode(Message("frame", {"index": 7, "source": "a.dm4"}, {"image": image, "xy": xy})),
            copy=False,
        )
        got = decode(pull.recv_multipart(copy=False))
    finally:
        ctx.destroy(linger=0)
    assert got.kind == "frame" and got.fields == {"index": 7, "source": "a.dm4"}
    np.testing.assert_array_equal(got.arrays["image"], image)
    np.testing.assert_array_equal(got.arrays["xy"], xy)
    assert got.arrays["image"].dtype == np.float32 and not got.arrays["image"].flags.writeable


def test_non_contiguous_and_empty_arrays() -> None:
    a = np.arange(20.0).reshape(4, 5)[:, ::2]
    got = decode(encode(Message("detections", {}, {"a": a, "none": np.zeros((0, 3))})))
    np.testing.assert_array_equal(got.arrays["a"], a)
    assert got.arrays["none"].shape == (0, 3)


def test_protocol_errors() -> None:
    with pytest.raises(MessageError, match="version"):
        decode([b'{"v": 99, "kind": "frame", "arrays": []}'])
    with pytest.raises(MessageError, match="version"):  # a peer of protocol 1 (detect mapped)
        decode([b'{"v": 1, "kind": "frame", "arrays": []}'])
    with pytest.raises(MessageError, match="not JSON"):
        decode([b"\x80\x03pickle"])
    with pytest.raises(MessageError, match="does not match"):
        spec = '"arrays":[{"name":"a","dtype":"<f4","shape":[3]}]'
        decode([f'{{"v":{PROTOCOL_VERSION},"kind":"frame",{spec}}}'.encode(), b"12"])
    with pytest.raises(MessageError, match="object"):
        encode(Message("frame", {}, {"a": np.array([object()])}))
