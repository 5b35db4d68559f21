"""Stoppers: re-poll outcomes, time limits, idle timeout, upstream failures, sizes."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer

from tests.conftest import ENV_PATH, GatewayFactory, Kube, gitlab_channel, wait_for_stdin_end
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import Term, open_term

POLL = 0.3


async def _open(
    server: TestServer, browser: aiohttp.ClientSession, protocol: str = "terminal.gitlab.com"
) -> Term:
    return await open_term(browser, str(server.make_url(ENV_PATH)), protocol)


async def _polling_gateway(make_gateway: GatewayFactory, **extra: object) -> TestServer:
    auth = {"poll_interval": f"{int(POLL * 1000)}ms", "poll_jitter": 0}
    auth.update(extra)
    return await make_gateway(authorization=auth)


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_revocation_closes_within_interval(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
    status: int,
) -> None:
    """A re-poll answering 401/403/404 closes with 4001 within the interval + 1 s."""
    server = await _polling_gateway(make_gateway)
    term = await _open(server, browser)
    session = await kube.next_session()
    auth_api.set_mode("deny")
    auth_api.deny_status = status
    revoked_at = time.monotonic()
    code, reason = await term.wait_closed()
    assert (code, reason) == (4001, "authorization revoked")
    assert time.monotonic() - revoked_at <= POLL + 1
    await wait_for_stdin_end(session)
    await session.wait_closed()
    assert session.client_close_code == 1000


@pytest.mark.parametrize("what", ["url", "header", "ca", "max_time", "subprotocols"])
async def test_changed_details_close_with_changed_code(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
    what: str,
) -> None:
    """A changed URL, header, CA, time limit or subprotocol list closes with 4002."""
    server = await _polling_gateway(make_gateway)
    term = await _open(server, browser)
    await kube.next_session()
    channel = dict(auth_api.channel)
    if what == "url":
        channel["Url"] = kube.exec_url(pod="mypod", container="main", command=["bash"])
    elif what == "header":
        channel["Header"] = {**channel["Header"], "X-Extra": ["1"]}
    elif what == "ca":
        channel["CAPem"] = trustme.CA().cert_pem.bytes().decode()
    elif what == "max_time":
        channel["MaxSessionTime"] = 600
    else:
        channel["Subprotocols"] = ["channel.k8s.io", "base64.channel.k8s.io"]
    auth_api.channel = channel
    assert await term.wait_closed() == (4002, "connection details changed")


async def test_reordered_header_keys_are_not_a_change(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """Header key order is not significant; the session survives re-polls."""
    auth_api.channel = {**auth_api.channel, "Header": {**auth_api.channel["Header"], "A": ["1"]}}
    server = await _polling_gateway(make_gateway)
    term = await _open(server, browser)
    await kube.next_session()
    auth_api.channel = {
        **auth_api.channel,
        "Header": dict(reversed(list(auth_api.channel["Header"].items()))),
    }
    await auth_api.wait_requests(3)
    await term.send_stdin(b"echo alive\r")
    await term.read_until(b"\r\nalive\r\n")


async def test_one_transient_failure_is_survived(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """One 500 on re-poll is tolerated; the next success resets the count."""
    server = await _polling_gateway(make_gateway)
    term = await _open(server, browser)
    await kube.next_session()
    auth_api.set_mode("fail")
    await auth_api.wait_requests(2)  # the initial authorize + one failed re-poll
    auth_api.set_mode("ok")
    await auth_api.wait_requests(4)
    auth_api.set_mode("fail")
    await auth_api.wait_requests(5)
    auth_api.set_mode("ok")
    await auth_api.wait_requests(6)
    await term.send_stdin(b"echo still-here\r")
    await term.read_until(b"\r\nstill-here\r\n")
    assert not term.closed


@pytest.mark.parametrize("mode", ["fail", "malformed", "stall"])
async def test_failures_past_grace_close(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
    mode: str,
) -> None:
    """Consecutive failures (5xx, garbage, timeouts) up to the grace close with 4003."""
    server = await _polling_gateway(make_gateway, timeout="300ms")
    term = await _open(server, browser)
    await kube.next_session()
    auth_api.set_mode(mode)
    assert await term.wait_closed() == (4003, "authorization unavailable")
    assert len(auth_api.requests) == 3  # initial + poll_failure_grace (2) failures


@pytest.mark.parametrize(
    ("max_session_time", "cap", "expected"),
    [(1, "0s", 1.0), (600, "700ms", 0.7)],
)
async def test_session_time_limit(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
    max_session_time: int,
    cap: str,
    expected: float,
) -> None:
    """The smaller of MaxSessionTime and session.max_duration closes with 4004 on time."""
    auth_api.channel = {**auth_api.channel, "MaxSessionTime": max_session_time}
    server = await make_gateway(session={"max_duration": cap})
    started = time.monotonic()
    term = await _open(server, browser)
    session = await kube.next_session()
    assert await term.wait_closed() == (4004, "session time limit reached")
    elapsed = time.monotonic() - started
    assert expected - 0.05 <= elapsed <= expected + 1.0
    await wait_for_stdin_end(session)


async def test_idle_timeout(
    make_gateway: GatewayFactory,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """No traffic either way for session.idle_timeout closes with 4005; traffic defers it."""
    server = await make_gateway(session={"idle_timeout": "600ms"})
    started = time.monotonic()
    term = await _open(server, browser)
    await kube.next_session()
    await term.read_until(b"$ ")
    await term.send_stdin(b"echo a\r")
    await term.read_until(b"\r\na\r\n")
    last_traffic = time.monotonic()
    assert await term.wait_closed() == (4005, "idle timeout")
    now = time.monotonic()
    assert now - last_traffic >= 0.55
    assert now - started <= 0.6 + (last_traffic - started) + 1.0


async def test_upstream_drop_is_1014(
    gateway: TestServer, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """An upstream whose TCP connection dies gives the browser 1014 with a reason."""
    term = await _open(gateway, browser)
    session = await kube.next_session()
    await term.read_until(b"$ ")
    session.abort()
    code, reason = await term.wait_closed()
    assert code == 1014
    assert reason.startswith("upstream failed:")


async def test_all_output_before_close_reaches_browser(
    gateway: TestServer, auth_api: FakeAuthApi, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """Bytes the upstream wrote right before closing all arrive before the close frame."""
    auth_api.channel = gitlab_channel(kube, command=["blob", "3000000", "7", "1000"], tty=False)
    term = await _open(gateway, browser)
    closed = await term.wait_closed()
    session = kube.sessions[-1]
    assert closed == (1000, "exit code 0"), (closed, len(term.stdout), session.end_reason)
    import random

    assert bytes(term.stdout) == random.Random(7).randbytes(3_000_000)


async def test_browser_message_too_big_is_1009(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """A browser frame over browser.max_message_size closes with 1009 and says the limit."""
    server = await make_gateway(browser={"max_message_size": "4KiB"})
    term = await _open(server, browser)
    session = await kube.next_session()
    await term.send_stdin(b"x" * 5000)
    code, reason = await term.wait_closed()
    assert code == 1009
    assert reason == "message too big (limit 4096 bytes)"
    await session.wait_closed()


async def test_browser_not_answering_pings_is_dropped(
    make_gateway: GatewayFactory,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """A browser that stops answering pings is dropped; the upstream gets EOT and a close."""
    server = await make_gateway(browser={"ping_interval": "200ms", "pong_timeout": "200ms"})
    ws = await browser.ws_connect(
        str(server.make_url(ENV_PATH)), protocols=["terminal.gitlab.com"], autoping=False
    )
    session = await kube.next_session()
    await wait_for_stdin_end(session)
    await session.wait_closed()
    await ws.close()


async def test_invalid_frame_from_browser_is_1002(
    gateway: TestServer, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """Bad base64 from a base64 browser closes with 1002 naming the problem."""
    term = await _open(gateway, browser, "base64.terminal.gitlab.com")
    await kube.next_session()
    await term.ws.send_str("!!! not base64 !!!")
    code, reason = await term.wait_closed()
    assert code == 1002
    assert reason.startswith("protocol error:")


async def test_concurrent_sessions_are_independent(
    gateway: TestServer, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """Twenty terminals at once each see only their own output."""
    terms = await asyncio.gather(*(_open(gateway, browser) for _ in range(20)))
    for i, term in enumerate(terms):
        await term.send_stdin(f"echo term-{i}\r".encode())
    for i, term in enumerate(terms):
        await term.read_until(f"\r\nterm-{i}\r\n".encode())
        assert b"term-" not in bytes(term.stdout).replace(f"term-{i}".encode(), b"")
    for term in terms:
        await term.ws.close()
