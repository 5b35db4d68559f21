"""Native contract, forwarded-for handling, upstream keepalive, log lines, the docs table."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from terminal_proxy.session.stop import CLOSE_CODES
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import open_term

ROOT = Path(__file__).resolve().parent.parent


async def test_native_contract_end_to_end_with_user(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The native JSON contract authorizes, and its user shows in the session log line."""
    channel = auth_api.channel
    auth_api.contract = "native"
    auth_api.user = {"id": "42", "username": "alice", "groups": ["dev"]}
    auth_api.channel = {
        "url": channel["Url"],
        "subprotocols": channel["Subprotocols"],
        "headers": channel["Header"],
        "ca_pem": channel["CAPem"],
        "max_session_time": 0,
    }
    server = await make_gateway(authorization={"contract": "native"})
    with caplog.at_level(logging.INFO, logger="terminal_proxy.session"):
        term = await open_term(browser, str(server.make_url(ENV_PATH)), "terminal.gitlab.com")
        await term.send_stdin(b"echo native\r")
        await term.read_until(b"\r\nnative\r\n")
    assert auth_api.requests[0].jwt_ok
    opened = [r for r in caplog.records if r.getMessage() == "session opened"]
    assert opened and opened[0].fields["user"] == "alice"  # type: ignore[attr-defined]
    await term.ws.close()


async def test_native_contract_rejects_unknown_fields(
    make_gateway: GatewayFactory, auth_api: FakeAuthApi, browser: aiohttp.ClientSession
) -> None:
    """A typo in a native answer is a 502 naming the field, not a silently dropped limit."""
    channel = auth_api.channel
    auth_api.contract = "native"
    auth_api.channel = {
        "url": channel["Url"],
        "subprotocols": channel["Subprotocols"],
        "max_sesion_time": 5,
    }
    server = await make_gateway(authorization={"contract": "native"})
    from tests.support.termclient import raw_handshake

    status, body, _ = await raw_handshake(browser, str(server.make_url(ENV_PATH)))
    assert status == 502 and "connection.max_sesion_time" in body


@pytest.mark.parametrize(
    ("sent", "expected"),
    [(None, "127.0.0.1"), ("203.0.113.9", "203.0.113.9, 127.0.0.1")],
)
async def test_forwarded_for_from_trusted_proxy(
    gateway: TestServer,
    kube: Kube,
    browser: aiohttp.ClientSession,
    sent: str | None,
    expected: str,
) -> None:
    """X-Forwarded-For from a trusted proxy (loopback by default) is extended."""
    headers = {"X-Forwarded-For": sent} if sent else None
    term = await open_term(
        browser, str(gateway.make_url(ENV_PATH)), "terminal.gitlab.com", headers=headers
    )
    session = await kube.next_session()
    assert session.headers.get("X-Forwarded-For") == expected
    await term.ws.close()


async def test_forwarded_for_from_untrusted_client_is_replaced(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """An untrusted client's X-Forwarded-For is dropped: upstream sees the peer address."""
    server = await make_gateway(browser={"trusted_proxies": ["10.0.0.0/8"]})
    term = await open_term(
        browser,
        str(server.make_url(ENV_PATH)),
        "terminal.gitlab.com",
        headers={"X-Forwarded-For": "198.51.100.7"},
    )
    session = await kube.next_session()
    assert session.headers.get("X-Forwarded-For") == "127.0.0.1"
    await term.ws.close()


async def test_upstream_not_answering_pings_is_1014(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """An upstream that stops answering pings is dropped with 1014 and a reason."""
    upgraded: list[web.WebSocketResponse] = []

    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v5.channel.k8s.io",), autoping=False)
        await ws.prepare(request)
        upgraded.append(ws)
        async for _ in ws:  # reads pings, never answers them
            pass
        return ws

    app = web.Application()
    app.router.add_get("/exec", silent)
    upstream = TestServer(app, host="127.0.0.1", port=0)
    await upstream.start_server()
    try:
        auth_api.channel = {
            "Subprotocols": ["v5.channel.k8s.io"],
            "Url": f"ws://127.0.0.1:{upstream.port}/exec",
        }
        server = await make_gateway(
            upstream={
                "allowed_hosts": [f"127.0.0.1:{upstream.port}"],
                "ping_interval": "200ms",
                "pong_timeout": "200ms",
            }
        )
        term = await open_term(browser, str(server.make_url(ENV_PATH)), "terminal.gitlab.com")
        code, reason = await term.wait_closed()
        assert code == 1014 and reason.startswith("upstream failed:")
    finally:
        await upstream.close()


async def test_session_log_lines_carry_the_fields(
    gateway: TestServer,
    kube: Kube,
    browser: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One line at open and one at end, with target, protocols, bytes, duration, codes."""
    ended_seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "session ended":
                ended_seen.set()

    watch = Watch()
    logging.getLogger("terminal_proxy.session").addHandler(watch)
    try:
        with caplog.at_level(logging.INFO, logger="terminal_proxy.session"):
            url = str(gateway.make_url(ENV_PATH))
            term = await open_term(browser, url, "terminal.gitlab.com")
            session = await kube.next_session()
            await term.send_stdin(b"echo logged\r")
            await term.read_until(b"\r\nlogged\r\n")
            await term.ws.close(code=1001)
            await session.wait_closed()
            async with asyncio.timeout(5):
                await ended_seen.wait()
    finally:
        logging.getLogger("terminal_proxy.session").removeHandler(watch)
    ended = next(r for r in caplog.records if r.getMessage() == "session ended")
    fields = ended.fields  # type: ignore[attr-defined]
    assert fields["pod"] == "mypod" and fields["namespace"] == "default"
    assert fields["container"] == "main" and fields["verb"] == "exec"
    assert fields["browser_protocol"] == "terminal.gitlab.com"
    assert fields["upstream_protocol"] == "v5.channel.k8s.io"
    assert fields["stop"] == "browser_left"
    assert fields["bytes_in"] == len(b"echo logged\r") and fields["bytes_out"] > 0
    assert fields["browser_close"] == 1001 and fields["duration_s"] >= 0
    # A full close handshake with the upstream, not a dropped connection (1006).
    assert fields["upstream_close"] == 1000 and session.client_close_code == 1000


def test_close_code_doc_matches_code() -> None:
    """docs/close-codes.md lists exactly the codes and reasons of session.CLOSE_CODES."""
    text = (ROOT / "docs/close-codes.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|\s*`?([^|`]*)`?\s*\| (\d+) \|$", text, re.M)
    documented = {name: (int(b), reason.strip(), int(u)) for name, b, reason, u in rows}
    actual = {
        reason.value: (code, text.split("{")[0].rstrip(": ").strip() if "{" in text else text, up)
        for reason, (code, text, up) in CLOSE_CODES.items()
    }
    for name, (code, reason, up) in actual.items():
        assert name in documented, name
        doc_code, doc_reason, doc_up = documented[name]
        assert (doc_code, doc_up) == (code, up), name
        assert doc_reason.replace(" …", "").replace(" N", "").startswith(reason), name
    assert set(documented) == set(actual)
