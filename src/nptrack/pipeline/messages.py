"""Pipeline messages: a JSON header followed by raw array buffers (multipart, no pickle).

Frame 0 of a multipart message is UTF-8 JSON: ``{"v": 1, "kind": ..., "arrays": [{"name",
"dtype", "shape"}, ...], ...fields}``; frames 1..n are the C-contiguous array buffers, sent
without copying. The receiver wraps the buffers with `numpy.frombuffer` (read-only views).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PROTOCOL_VERSION", "Message", "MessageError", "decode", "encode"]

# 2: frames go to detection unregistered; their registration travels to the track stage
PROTOCOL_VERSION = 2
_ALLOWED_KINDS = {"frame", "registration", "detections", "tracks", "status", "error", "end"}


class MessageError(ValueError):
    """A received message does not follow the protocol."""


@dataclass
class Message:
    """One pipeline message.

    Attributes
    ----------
    kind : str
        'frame', 'registration', 'detections', 'tracks', 'status', 'error' or 'end'.
    fields : dict
        JSON-serialisable header fields (frame index, source, pixel size, timings ...).
    arrays : dict of str to ndarray
        Named arrays carried as raw buffers.
    """

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode(message: Message) -> list[Any]:
    """Multipart parts for `socket.send_multipart(parts, copy=False)`."""
    if message.kind not in _ALLOWED_KINDS:
        raise MessageError(f"unknown message kind {message.kind!r}")
    reserved = {"v", "kind", "arrays"} & set(message.fields)
    if reserved:
        raise MessageError(f"field name(s) {sorted(reserved)} are reserved for the header")
    specs, buffers = [], []
    for name, array in message.arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.hasobject:
            raise MessageError(f"array {name!r} has dtype object: not sendable without pickle")
        specs.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape)})
        buffers.append(memoryview(array).cast("B") if array.size else b"")
    header = {"v": PROTOCOL_VERSION, "kind": message.kind, "arrays": specs, **message.fields}
    return [json.dumps(header, separators=(",", ":")).encode(), *buffers]


def decode(parts: list[Any]) -> Message:
    """Rebuild a `Message` from received parts (bytes or zmq.Frame)."""
    if not parts:
        raise MessageError("empty message")
    try:
        header = json.loads(bytes(parts[0]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    if header.pop("v", None) != PROTOCOL_VERSION:
        raise MessageError(f"protocol version mismatch (want {PROTOCOL_VERSION})")
    kind = header.pop("kind", None)
    specs = header.pop("arrays", [])
    if kind not in _ALLOWED_KINDS:
        raise MessageError(f"unknown message kind {kind!r}")
    if len(specs) != len(parts) - 1:
        raise MessageError(f"header lists {len(specs)} arrays, message has {len(parts) - 1}")
    arrays = {}
    for spec, part in zip(specs, parts[1:], strict=True):
        buffer = part.buffer if hasattr(part, "buffer") else part
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        if dtype.itemsize * int(np.prod(shape)) != len(memoryview(buffer).cast("B")):
            raise MessageError(f"array {spec['name']!r}: buffer size does not match its shape")
        array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
        array.flags.writeable = False  # the buffer may be shared with the sender (inproc)
        arrays[spec["name"]] = array
    return Message(kind, header, arrays)
