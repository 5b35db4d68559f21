"""Output coalescing: a burst of small upstream frames reaches the browser whole, in order,
in fewer frames, with stream boundaries (stdout/stderr) and the exit status kept.

The upstream is a real aiohttp server that writes the whole burst pre-framed in one
``transport.write``, as a busy terminal's output arrives in one TCP read, so the
gateway finds the frames already parsed and queued.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from terminal_proxy.session.links import COALESCE_LIMIT
from tests.conftest import ENV_PATH, GatewayFactory
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import open_term

SUCCESS = b'\x03{"metadata":{},"status":"Success"}'


def server_frame(payload: bytes) -> bytes:
    """An unmasked binary frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload


def burst(frames: list[tuple[int, bytes]]) -> web.Application:
    """An exec endpoint that writes ``(stream, payload)`` frames at once, then exits 0."""

    async def exec_(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v5.channel.k8s.io",))
        await ws.prepare(request)
        assert request.transport is not None
        wire = b"".join(server_frame(bytes((stream,)) + data) for stream, data in frames)
        request.transport.write(wire + server_frame(SUCCESS))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/exec", exec_)
    return app


@pytest.mark.parametrize("browser_protocol", ["terminal.gitlab.com", "v5.channel.k8s.io"])
async def test_burst_of_small_frames_is_coalesced_losslessly(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    browser_protocol: str,
) -> None:
    """3,000 frames of 64 B (stdout, with stderr runs between) arrive whole and in order."""
    frames: list[tuple[int, bytes]] = []
    for i in range(3000):
        stream = 2 if i % 500 == 499 else 1
        frames.append((stream, (b"%06d " % i) * 8 + b"\r\n" + bytes(5)))  # 63 B
    upstream = TestServer(burst(frames), host="127.0.0.1", port=0)
    await upstream.start_server()
    try:
        auth_api.channel = {
            "Subprotocols": ["v5.channel.k8s.io"],
            "Url": f"ws://127.0.0.1:{upstream.port}/exec",
        }
        server = await make_gateway(upstream={"allowed_hosts": [f"127.0.0.1:{upstream.port}"]})
        term = await open_term(browser, str(server.make_url(ENV_PATH)), browser_protocol)
        assert await term.wait_closed() == (1000, "exit code 0")
    finally:
        await upstream.close()
    stdout = b"".join(data for stream, data in frames if stream == 1)
    stderr = b"".join(data for stream, data in frames if stream == 2)
    if browser_protocol == "terminal.gitlab.com":  # one byte stream, in the order written
        assert bytes(term.stdout) == b"".join(data for _, data in frames)
    else:
        assert (bytes(term.stdout), bytes(term.stderr)) == (stdout, stderr)
        assert [e.code for e in term.exits] == [0]
    # 3,000 upstream frames in one TCP burst: a handful of browser frames, each bounded.
    assert term.frames < 100, term.frames
    assert term.frames >= len(b"".join(d for _, d in frames)) // COALESCE_LIMIT
