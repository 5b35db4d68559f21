"""Memory under a slow upstream (issue 11): the twin of test_serve_process's slow-browser
test. The browser floods input to an upstream that never reads: the gateway stops
reading the browser once aiohttp's writer towards the upstream is full (input
back-pressure), so its memory stays bounded and the browser's sends block."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import ENV_PATH
from tests.fakes.auth_api import FakeAuthApi
from tests.support.process import GatewayProcess
from tests.support.termclient import open_term


class StuckUpstream:
    """A channel.k8s.io WebSocket server that upgrades, then never reads again."""

    def __init__(self) -> None:
        self.upgraded = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.host_port = ""

    async def __aenter__(self) -> StuckUpstream:
        app = web.Application()
        app.router.add_get("/exec", self._exec)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.host_port = f"{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        self._release.set()
        await self._runner.cleanup()

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("channel.k8s.io",))
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.pause_reading()
        self.upgraded.set()
        await self._release.wait()
        request.transport.abort()
        return ws


@pytest.fixture
async def stuck() -> AsyncIterator[StuckUpstream]:
    async with StuckUpstream() as server:
        yield server


async def test_slow_upstream_keeps_gateway_memory_bounded(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    stuck: StuckUpstream,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """A browser sending input as fast as it can for 3 s to an upstream that never reads:
    the gateway's RSS grows little and only a few MB get through before sends block."""
    auth_api.channel = {
        "Subprotocols": ["channel.k8s.io"],
        "Url": f"ws://{stuck.host_port}/exec",
        "Header": {},
        "MaxSessionTime": 0,
    }
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(secret).decode() + "\n")
    config = tmp_path / "terminal-proxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "authorization": {"backend": auth_api.url, "secret_file": str(secret_file)},
                "upstream": {"allowed_hosts": [stuck.host_port]},
                "session": {"shutdown_grace": "0s", "close_timeout": "2s"},
                "logging": {"level": "info", "format": "json"},
            }
        )
    )
    async with GatewayProcess(["serve", "--config", str(config)]) as gateway:
        term = await open_term(browser, gateway.url + ENV_PATH, "terminal.gitlab.com")
        await stuck.upgraded.wait()
        baseline = gateway.rss_bytes()
        chunk = b"x" * (64 * 1024)
        sent = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Send for 3 s: the pace is the point of the test, not a sync.
        try:
            async with asyncio.timeout(3):
                while True:
                    await term.send_stdin(chunk)
                    sent += len(chunk)
        except TimeoutError:
            pass
        assert loop.time() - started >= 3
        grown = gateway.rss_bytes() - baseline
        term.ws._conn.transport.abort()  # type: ignore[union-attr]
    print(f"input sent before back-pressure: {sent} bytes; RSS grew by {grown}")
    assert sent < 32 << 20, f"{sent} bytes of input went through to an upstream reading none"
    assert grown < 16 << 20, f"gateway RSS grew by {grown} bytes"
