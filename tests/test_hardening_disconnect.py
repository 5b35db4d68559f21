"""Hardening: clients that go away or stop reading at awkward moments (issue 11, item
10). A client that leaves while its authorization or upstream dial is in flight: the work
stops, no traceback, no slot leaked. A client flooding pings and never reading the pongs:
the session ends as ``browser_left``, not ``internal_error``.

The clients here are raw sockets (an aiohttp client would read its pongs for us).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from yarl import URL

from terminal_proxy.app import GATEWAY
from terminal_proxy.session.relay import Session
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.process import GatewayProcess
from tests.support.termclient import open_term


async def _upgrade(
    server: TestServer | tuple[str, int], protocol: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw WebSocket client: TCP, a small receive buffer, the upgrade request sent."""
    host, port = (server.host, server.port) if isinstance(server, TestServer) else server
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        (
            f"GET {ENV_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


def _ping() -> bytes:
    """One masked client ping frame with a 125-byte payload (the largest allowed)."""
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"p" * 125))
    return bytes([0x89, 0x80 | 125]) + mask + payload


async def _live_session(server: TestServer) -> Session:
    gateway = server.app[GATEWAY]
    async with asyncio.timeout(10):
        while not gateway.registry.live:
            await asyncio.sleep(0.01)
    return next(iter(gateway.registry.live))


async def test_ping_flood_without_reading_pongs_ends_as_browser_left(
    make_gateway: GatewayFactory, kube: Kube, caplog: pytest.LogCaptureFixture
) -> None:
    """Pings as fast as the socket takes them, pongs never read; then the client goes.
    The session's stop is browser_left and the upstream gets a normal close."""
    server = await make_gateway()
    reader, writer = await _upgrade(server, "terminal.gitlab.com")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    upstream = await kube.next_session()
    session = await _live_session(server)
    pings = _ping() * 64

    async def flood() -> None:
        while True:
            writer.write(pings)
            await writer.drain()

    flooding = asyncio.ensure_future(flood())
    # The gateway's pongs fill the client's receive buffer, then the kernel's send
    # buffer, then the transport's own: from then on its pong writes wait.
    browser = session.browser
    assert isinstance(browser, aiohttp.web.WebSocketResponse)
    request = browser._req  # the gateway's side of the socket
    assert request is not None and request.transport is not None
    try:
        async with asyncio.timeout(20):
            while request.transport.get_write_buffer_size() < 64 * 1024:
                await asyncio.sleep(0.01)
    finally:
        flooding.cancel()
    writer.transport.abort()
    async with asyncio.timeout(10):
        await asyncio.shield(session.done)
    assert session.stop is not None
    assert session.stop.reason.value == "browser_left", session.stop
    await upstream.wait_closed()
    _no_errors(caplog)


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


async def test_client_leaving_during_authorization_or_dial_stops_the_work(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """A served gateway (as in production): a client hangs up while the authorization
    API is answering, another while the upstream dial hangs. Each handshake stops at once
    (its pending slot is free for the next client, the dial's connection is dropped),
    nothing is dialled for the first, and no traceback or error is logged."""
    accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await accepted.put(reader)  # accepts, never answers (not even the TLS handshake)

    black_hole = await asyncio.start_server(silent, "127.0.0.1", 0)
    hole_port = black_hole.sockets[0].getsockname()[1]
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(secret).decode() + "\n")
    config = tmp_path / "terminal-proxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "authorization": {"backend": auth_api.url, "secret_file": str(secret_file)},
                "upstream": {
                    "allowed_hosts": [kube.host_port, f"127.0.0.1:{hole_port}"],
                    "dial_timeout": "60s",
                },
                "session": {"shutdown_grace": "0s", "close_timeout": "2s"},
                "limits": {"max_pending_handshakes": 1},
                "logging": {"level": "info", "format": "json"},
            }
        )
    )
    try:
        async with GatewayProcess(["serve", "--config", str(config)]) as gateway:
            address = URL(gateway.url)
            assert address.host is not None and address.port is not None
            where = (address.host, address.port)
            url = gateway.url + ENV_PATH
            # 1. Gone during the authorization.
            auth_api.set_mode("stall")
            _, writer = await _upgrade(where, "terminal.gitlab.com")
            await auth_api.wait_requests(1)
            writer.transport.abort()
            await gateway.wait_for_line(lambda line: "client left before the terminal" in line)
            # The one pending slot is free again: the next client reaches the API.
            opening = asyncio.ensure_future(open_term(browser, url, "terminal.gitlab.com"))
            await auth_api.wait_requests(2)
            auth_api.set_mode("ok")
            term = await opening
            await kube.next_session()
            await term.ws.close()
            # 2. Gone during the dial (the upstream accepts and never answers).
            channel = dict(auth_api.channel)
            auth_api.channel = channel | {"Url": f"wss://127.0.0.1:{hole_port}/exec"}
            _, writer = await _upgrade(where, "terminal.gitlab.com")
            dialled = await accepted.get()
            writer.transport.abort()
            await gateway.wait_for_line(
                lambda _: sum("client left before the terminal" in x for x in gateway.lines) == 2
            )
            async with asyncio.timeout(10):
                await dialled.read()  # EOF: the gateway hung up the dial
            auth_api.channel = channel
            term = await open_term(browser, url, "terminal.gitlab.com")
            await kube.next_session()
            await term.ws.close()
            assert len(kube.sessions) == 2
            await gateway.wait_for_line(lambda line: "session ended" in line)
    finally:
        for held_writer in held:
            held_writer.close()
        black_hole.close()
        await black_hole.wait_closed()
    errors = [line for line in gateway.lines if '"level": "error"' in line or "Traceback" in line]
    assert not errors, errors
