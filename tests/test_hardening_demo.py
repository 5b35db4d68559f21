"""Hardening of the demo (issue 11, item 10): 64 page reloads within the resume grace
used to fill the session server (64 terminals, the reloaded pages' detached ones waiting
for a resume) and every further terminal was a 500 for 5 minutes. Now a user's terminals
are capped below that (the oldest detached one ends to make room), and a full session
server is a clear 503 with Retry-After.

Real parts: the session server (TLS, processes on PTYs), the demo's static authorizer and
config, the gateway; the test plays the page, reloading (close 1001, as a browser does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from terminal_proxy.app import GATEWAY, build_app
from terminal_proxy.authorization.static import COOKIE, StaticAuthorizer
from terminal_proxy.config import ListenAddress
from terminal_proxy.demo import DEMO_TERMINALS_PER_USER, demo_config, demo_policy
from terminal_proxy.protocols import TERMINAL_PROXY
from terminal_proxy.sessionserver import SessionServer
from tests.support.termclient import open_term, raw_handshake, wait_hello

PATH = "/terminal.ws"
RELOADS = 65  # one more than SessionServer's max_sessions (64)


@pytest.fixture
async def session_server() -> AsyncIterator[SessionServer]:
    async with SessionServer(["sh"], host="127.0.0.1", port=0) as server:
        yield server


async def _demo(
    session_server: SessionServer, per_user: int | None = None
) -> tuple[TestServer, dict[str, str]]:
    authorizer = StaticAuthorizer(demo_policy(), session_server)
    config = demo_config(ListenAddress("127.0.0.1", 0), session_server.host_port)
    if per_user is not None:
        limits = dataclasses.replace(config.limits, max_sessions_per_user=per_user)
        config = dataclasses.replace(config, limits=limits)
    server = TestServer(build_app(config, authorizer=authorizer), host="127.0.0.1", port=0)
    await server.start_server()
    cookie = authorizer.login(authorizer.issue_one_time_token(demo_policy().users[0].name))
    assert cookie is not None
    return server, {"Cookie": f"{COOKIE}={cookie}"}


async def test_page_reloads_never_fill_the_session_server(
    session_server: SessionServer, browser: aiohttp.ClientSession
) -> None:
    """65 reloads in a row: every one gets a working terminal; the user's oldest detached
    terminals end to make room, so the session server never fills up."""
    server, cookie = await _demo(session_server)
    try:
        url = str(server.make_url(PATH))
        for i in range(RELOADS):
            term = await open_term(browser, url, TERMINAL_PROXY, headers=cookie)
            await wait_hello(term)
            await term.send_stdin(f"echo reload-{i}\r".encode())
            await term.read_until(f"reload-{i}\r\n".encode())
            await term.ws.close(code=1001)  # the page goes away: detached, resumable
            assert len(session_server.sessions) <= DEMO_TERMINALS_PER_USER + 1
        assert len(server.app[GATEWAY].registry.resumable) <= DEMO_TERMINALS_PER_USER
    finally:
        await server.close()


async def test_full_session_server_is_a_clear_503(
    session_server: SessionServer, browser: aiohttp.ClientSession
) -> None:
    """Without the per-user cap (several users together can fill it too), a full session
    server is a 503 with the reason and Retry-After, not a 500."""
    server, cookie = await _demo(session_server, per_user=0)
    try:
        url = str(server.make_url(PATH))
        for _ in range(session_server.max_sessions):
            term = await open_term(browser, url, TERMINAL_PROXY, headers=cookie)
            await wait_hello(term)
            await term.ws.close(code=1001)
        status, body, headers = await raw_handshake(
            browser, url, protocols=TERMINAL_PROXY, headers=cookie
        )
        assert status == 503
        assert body.startswith("the session server has no free terminal")
        assert headers["Retry-After"] == "30"
    finally:
        await server.close()
