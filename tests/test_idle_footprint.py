"""What an open session keeps once its handshake is done (docs/performance.md, idle memory).

An idle session's memory is mostly aiohttp's per-connection state on both legs; the
gateway keeps nothing nobody reads after the upgrade: no upstream response (its 101
headers, a copy of our request's headers with the bearer token), neither connection's HTTP
parser, and no attribute of ours un-shares the browser socket's
``__dict__``. No aiohttp request timer outlives the dial either (its default total timeout
armed a 5-minute loop timer per dial that an upgraded response never cancels). The session
must still relay afterwards, both ways, under backpressure too.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from terminal_proxy.app import build_app
from terminal_proxy.gateway import GATEWAY
from terminal_proxy.listener import ConnectionGate, GuardedRunner
from terminal_proxy.protocols import TERMINAL_PROXY
from tests.conftest import ENV_PATH, Kube, gitlab_channel, make_config
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import open_term


@pytest.fixture
async def served(auth_api: FakeAuthApi, kube: Kube, secret: bytes) -> AsyncIterator[web.AppRunner]:
    """The app behind the production listener (``GuardedRunner``), as ``serve`` runs it."""
    runner = GuardedRunner(
        build_app(make_config(auth_api.url, secret, [kube.host_port])), ConnectionGate("main")
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner
    await runner.cleanup()


async def test_open_session_keeps_no_handshake_state(
    served: web.AppRunner, auth_api: FakeAuthApi, kube: Kube
) -> None:
    auth_api.channel = gitlab_channel(kube, command=["cat"], tty=False)
    host, port = served.addresses[0][:2]
    # A browser without aiohttp's request timer, so any left on the loop is the gateway's.
    browser = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    try:
        await _check(served, kube, browser, f"http://{host}:{port}{ENV_PATH}")
    finally:
        await browser.close()


async def _check(
    served: web.AppRunner, kube: Kube, browser: aiohttp.ClientSession, url: str
) -> None:
    term = await open_term(browser, url, "terminal.gitlab.com")
    await kube.next_session()
    await term.send_stdin(b"before")
    await term.read_until(b"before")
    (session,) = served.app[GATEWAY].registry.live

    upstream: Any = session.upstream
    # The socket closes through a holder of its connection alone: no response, so no
    # response headers and no copy of our request's (the bearer token among them).
    leg = upstream._response
    assert not hasattr(leg, "__dict__")
    assert [name for name in type(leg).__slots__ if name != "_protocol"] == []
    assert leg._protocol._parser is None
    assert leg._protocol._buffer == ()  # its queue of HTTP answers, never used again

    browser_socket: Any = session.browser
    assert browser_socket._req.protocol._parser is None
    assert browser_socket._req.protocol._messages == ()  # nor its queue of requests
    assert "max_message_size" not in vars(browser_socket)

    scheduled: list[asyncio.TimerHandle] = getattr(asyncio.get_running_loop(), "_scheduled", [])
    request_timers = [
        handle
        for handle in scheduled
        if not handle.cancelled()
        and type(getattr(handle._callback, "__self__", None)).__name__ == "TimeoutHandle"  # type: ignore[attr-defined]
    ]
    assert not request_timers

    # Both ways still work, a burst that makes reading pause and resume included.
    burst = bytes(range(256)) * 256  # 64 KiB
    for _ in range(64):
        await term.send_stdin(burst)
    await term.read_until(b"before" + burst * 64)
    await term.ws.close()


@pytest.mark.parametrize("subprotocol", ["terminal.gitlab.com", TERMINAL_PROXY])
async def test_a_closed_session_is_freed_at_once(
    served: web.AppRunner, auth_api: FakeAuthApi, kube: Kube, subprotocol: str
) -> None:
    """An ended session is freed by reference counting, with nothing left for the cycle
    collector, and nothing keeps it alive: not the upstream socket's heartbeat timer.

    aiohttp re-armed the client socket's heartbeat when the upstream's answer to our close
    frame arrived, after the socket was closed; that timer held every closed upstream
    socket (and its transport, reader and writer) for the whole ping interval. And the
    sockets' heartbeat callbacks and the re-poller's were reference cycles, which left
    every ended session to the collector (docs/performance.md, "garbage collection").
    """
    auth_api.channel = gitlab_channel(kube, command=["cat"], tty=False)
    host, port = served.addresses[0][:2]
    async with aiohttp.ClientSession() as browser:
        term = await open_term(browser, f"http://{host}:{port}{ENV_PATH}", subprotocol)
        await kube.next_session()
        await term.send_stdin(b"ping")
        await term.read_until(b"ping")
        (session,) = served.app[GATEWAY].registry.live
        pinged: Any = session.upstream
        assert pinged._heartbeat is not None  # the gateway pings its upstreams
        del pinged
        assert session._repoller.interval > 0  # and re-polls its authorization
        gc.collect()
        gc.disable()
        try:
            freed = [weakref.ref(part) for part in (session, session.upstream, session.browser)]
            done = session.done
            del session
            await term.ws.close()
            await done
            # What the last bytes scheduled runs on the next turns of the loop.
            for _ in range(3):
                await asyncio.sleep(0)
            alive = [ref() for ref in freed if ref() is not None]
            assert not alive, [type(part).__name__ for part in alive]
        finally:
            gc.enable()
