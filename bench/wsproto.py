"""Just enough RFC 6455 for the fake upstream and the benchmark clients.

No library: frames are built by hand, clients pre-mask whole batches once, and the
client-side ``Scanner`` parses headers only (payload bytes are counted, never copied), so
the clients and the upstream cost as little as possible and the relay under test is the
bottleneck.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from typing import Final

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Scanner",
    "accept_key",
    "close_payload",
    "encode_frame",
    "handshake_request",
    "mask",
    "new_key",
    "parse_head",
]

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (masking and unmasking alike)."""
    n = len(data)
    if n == 0:
        return b""
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, *, mask_key: bytes | None = None) -> bytes:
    """One final frame; masked (client to server) when ``mask_key`` is given."""
    n = len(payload)
    bit = 0x80 if mask_key is not None else 0
    if n < 126:
        head = bytes((0x80 | opcode, bit | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, bit | 127)) + n.to_bytes(8, "big")
    if mask_key is None:
        return head + payload
    return head + mask_key + mask(payload, mask_key)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


def handshake_request(host: str, path: str, protocols: list[str], key: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """The first line and the headers (lower-cased names; repeated ones joined by ", ")."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return lines[0], headers


# (opcode, payload) of a frame the scanner hands over whole.
FrameCallback = Callable[[int, bytes], None]


class Scanner:
    """Header-only parser of unmasked server-to-client frames.

    ``feed(buf, start, end)`` consumes complete frames (and the payload of a large frame
    as it streams past) and returns the offset of the first byte it could not use yet (an
    incomplete header or small frame); the caller keeps those bytes for the next call.

    Data frames count towards ``payload`` (minus the stream byte when ``prefixed``, and
    only stdout/stderr streams then) unless ``keep_data`` is set, in which case every data
    frame of at most 125 bytes is handed to ``on_frame``, as are control frames and
    non-output streams (the Kubernetes status). Runs of identical frame headers are
    checked with strided slices, so a run of small frames costs a few C calls.
    """

    def __init__(self, *, prefixed: bool, on_frame: FrameCallback, keep_data: bool = False):
        self.prefixed = prefixed
        self.keep_data = keep_data
        self.on_frame = on_frame
        self.payload = 0
        self.frames = 0
        self._skip = 0

    def feed(self, buf: bytearray, start: int, end: int) -> int:
        pos = start
        if self._skip:
            take = min(self._skip, end - pos)
            pos += take
            self._skip -= take
        prefix = 1 if self.prefixed else 0
        while True:
            avail = end - pos
            if avail < 2:
                return pos
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 & 0x80:
                raise ValueError("masked frame from a server")
            length = b1
            head = 2
            if length == 126:
                if avail < 4:
                    return pos
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if avail < 10:
                    return pos
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            opcode = b0 & 0x0F
            size = head + length
            if length <= 125:
                if avail < size:
                    return pos
                if opcode >= 8 or self.keep_data:
                    self.on_frame(opcode, bytes(buf[pos + head : pos + size]))
                    pos += size
                    continue
                if prefix and (length == 0 or buf[pos + head] not in (1, 2)):
                    self.on_frame(opcode, bytes(buf[pos + head : pos + size]))
                    pos += size
                    continue
            else:
                if avail < head + prefix:
                    return pos
                if prefix and buf[pos + head] not in (1, 2):
                    raise ValueError(f"large frame on stream {buf[pos + head]}")
            # An output frame: count it and every following frame with the same header.
            run = 1
            fit = avail // size
            if fit > 1:
                run = fit
                stop = pos + fit * size
                for i in range(head + prefix):
                    column = buf[pos + i : stop : size]
                    same = fit - len(column.lstrip(column[:1]))
                    if same < run:
                        run = same
                        if run == 1:
                            break
            self.frames += run
            self.payload += run * (length - prefix)
            pos += run * size
            if pos > end:  # the last frame of the run is incomplete (only when run == 1)
                self._skip = pos - end
                pos = end
