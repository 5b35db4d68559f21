"""HTTP/1.1 requests written byte for byte on a raw socket, as an attacker would send them.

``raw_request`` sends a request head exactly as given (no client normalizes the target
or the headers) and reads the answer's head, and its body when the answer is not an
upgrade. ``upgrade_head`` builds a WebSocket upgrade head around a target and headers.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiohttp.test_utils import TestServer

__all__ = ["RawAnswer", "ask", "raw_request", "upgrade_head"]

WAIT = 10.0


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: str


def upgrade_head(
    target: bytes,
    host: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    protocol: bytes = b"terminal.gitlab.com",
) -> bytes:
    """A WebSocket upgrade request head for ``target`` with ``Host: host``."""
    lines = [
        b"GET " + target + b" HTTP/1.1",
        b"Host: " + host,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Protocol: " + protocol,
    ]
    lines += [name + b": " + value for name, value in extra or []]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def raw_request(host: str, port: int, head: bytes) -> RawAnswer:
    """Send ``head``; return the answer (for a 101, the head only; the socket is closed)."""
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head)
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = raw.decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            status = int(status_line.split(" ", 2)[1])
            body = b""
            if status != 101:
                length = headers.get("content-length")
                if length is not None:
                    body = await reader.readexactly(int(length))
                else:
                    body = await reader.read()
            return RawAnswer(status, headers, body.decode("utf-8", "replace"))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def ask(
    server: TestServer,
    target: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    host: bytes | None = None,
) -> RawAnswer:
    """An upgrade request for ``target`` to ``server`` (Host: its own address by default)."""
    assert server.port is not None
    own = f"{server.host}:{server.port}".encode()
    return await raw_request(server.host, server.port, upgrade_head(target, host or own, extra))
