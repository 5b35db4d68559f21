"""The "done when" of the production issue: 2,000 live sessions plus a burst of 5,000
handshakes over the limit leave every admitted session working and every refused one
with a clear status.

The gateway is a real ``terminal-proxy serve`` process; the browsers, the authorization
API and a tiny echoing upstream (``v4.channel.k8s.io``: stdin comes back as stdout) run
in the test process. About 4 sockets per session across both processes, well under the
machine's 20,000 descriptors.
"""

from __future__ import annotations

import asyncio
import base64
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import ENV_PATH
from tests.fakes.auth_api import FakeAuthApi
from tests.support.process import GatewayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SESSIONS = 2_000
BURST = 5_000
# Concurrency of the test's own clients (bounded so the listen backlog never overflows).
OPENING = 200
BURSTING = 500


class EchoUpstream:
    """A minimal exec endpoint: v4.channel.k8s.io, stream 0 echoed back on stream 1."""

    def __init__(self) -> None:
        self.connections = 0
        self._runner: web.AppRunner | None = None
        self.host_port = ""

    async def __aenter__(self) -> EchoUpstream:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.host_port = f"{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",), compress=False)
        await ws.prepare(request)
        self.connections += 1
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x00":
                await ws.send_bytes(b"\x01" + msg.data[1:])
        return ws


@pytest.fixture
async def echo_upstream() -> AsyncIterator[EchoUpstream]:
    async with EchoUpstream() as upstream:
        yield upstream


async def echo(ws: aiohttp.ClientWebSocketResponse, token: bytes) -> None:
    """Send ``token`` as stdin; wait until it comes back as output."""
    await ws.send_bytes(token)
    received = b""
    while token not in received:
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.BINARY, (msg.type, msg.data, msg.extra)
        received += msg.data


async def test_2000_sessions_and_a_5000_handshake_burst_over_the_limit(
    tmp_path: Path, auth_api: FakeAuthApi, secret: bytes, echo_upstream: EchoUpstream
) -> None:
    """limits.max_sessions = 2,000: the 2,000 sessions open and relay; all 5,000 extra
    handshakes get 503 + Retry-After + the reason, while the sessions keep relaying."""
    auth_api.channel = {
        "Subprotocols": ["channel.k8s.io"],
        "Url": f"ws://{echo_upstream.host_port}/api/v1/namespaces/default/pods/p/exec"
        "?command=sh&stdin=true&stdout=true&tty=true",
        "Header": {},
        "MaxSessionTime": 0,
    }
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(secret).decode())
    config = tmp_path / "terminal-proxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "authorization": {
                    "backend": auth_api.url,
                    "secret_file": str(secret_file),
                    "poll_interval": 0,
                },
                "upstream": {"allowed_hosts": [echo_upstream.host_port]},
                "session": {"shutdown_grace": 0, "close_timeout": "2s"},
                "limits": {"max_sessions": SESSIONS, "retry_after": "10s"},
                "metrics": {"listen": "127.0.0.1:0"},
                "logging": {"level": "info", "format": "text"},
            }
        )
    )
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with (
        GatewayProcess(["serve", "--config", str(config)]) as gateway,
        aiohttp.ClientSession(connector=connector) as client,
    ):
        url = gateway.url + ENV_PATH
        metrics_line = await gateway.wait_for_line(lambda line: "metrics listening on" in line)
        metrics = re.search(r"(http://\S+/metrics)", metrics_line)
        assert metrics

        started = loop.time()
        opening = asyncio.Semaphore(OPENING)

        async def open_one() -> aiohttp.ClientWebSocketResponse:
            async with opening:
                ws = await client.ws_connect(url, protocols=["terminal.gitlab.com"])
            assert ws.protocol == "terminal.gitlab.com"
            return ws

        sockets = await asyncio.gather(*(open_one() for _ in range(SESSIONS)))
        opened_in = loop.time() - started
        assert echo_upstream.connections == SESSIONS

        bursting = asyncio.Semaphore(BURSTING)
        headers = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "terminal.gitlab.com",
        }

        async def refused_one() -> tuple[int, str, str]:
            async with bursting, client.get(url, headers=headers) as resp:
                return resp.status, resp.headers.get("Retry-After", ""), await resp.text()

        async def relay_all(tag: str) -> None:
            await asyncio.gather(
                *(echo(ws, f"<{tag}-{i}>".encode()) for i, ws in enumerate(sockets))
            )

        started = loop.time()
        # The burst and traffic on every admitted session, at the same time.
        burst, _ = await asyncio.gather(
            asyncio.gather(*(refused_one() for _ in range(BURST))), relay_all("during")
        )
        burst_in = loop.time() - started
        statuses = Counter(status for status, _, _ in burst)
        assert statuses == {503: BURST}, statuses
        assert {retry for _, retry, _ in burst} == {"10"}
        assert all("limit of open terminals" in body for _, _, body in burst)
        assert echo_upstream.connections == SESSIONS  # nothing over the limit was dialled

        await relay_all("after")
        assert all(not ws.closed for ws in sockets)
        async with client.get(metrics.group(1)) as resp:
            text = await resp.text()
        assert f"terminal_proxy_sessions_active {float(SESSIONS)}" in text
        assert f'terminal_proxy_limited_total{{limit="sessions"}} {float(BURST)}' in text

        print(
            f"\n{SESSIONS} sessions opened in {opened_in:.1f}s; {BURST} refused in {burst_in:.1f}s"
        )
        assert await gateway.stop(signal.SIGTERM) == 0
        closes = await asyncio.gather(*(ws.receive() for ws in sockets))
        assert {(msg.data, msg.extra) for msg in closes} == {(1001, "server shutting down")}
