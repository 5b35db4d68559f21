"""Hardening of re-polls (issue 11, item 3): ``authorization.timeout`` bounds a whole
re-poll (the wait for a connection, the answer and its body), so an authorization API
that trickles its answers cannot keep re-polls alive for ever, and slow answers filling
every re-poll slot cannot stop revocation: a session fails closed within
``poll_failure_grace`` × (interval + timeout).

The authorization API is the real fake, answering per user (the browser's cookie): some
users' answers trickle one byte every 300 ms (each read well under the timeout), a
revoked user's is a quick 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from terminal_proxy.authorization.http import MAX_REPOLLS
from terminal_proxy.protocols import TERMINAL_PROXY
from tests.conftest import ENV_PATH, GatewayFactory, Kube, gitlab_channel
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import Term, open_term

TIMEOUT = 1.0
INTERVAL = 0.5
GRACE = 2
JITTER = 0.1
# Fail closed within the grace's re-polls, each at most interval (jittered) + timeout;
# plus the close handshake and a loaded machine's scheduling.
FAIL_CLOSED_WITHIN = GRACE * (INTERVAL * (1 + JITTER) + TIMEOUT) + 2.0
TRICKLE_EVERY = 0.3


class PerUserAuthApi(FakeAuthApi):
    """The fake API; ``behaviour[user]`` ("ok", "trickle", "deny") by the Cookie user."""

    def __init__(self, secret: bytes) -> None:
        super().__init__(secret=secret)
        self.behaviour: dict[str, str] = {}

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        user = request.headers.get("Cookie", "").removeprefix("user=")
        behaviour = self.behaviour.get(user, "ok")
        if behaviour == "deny":
            return web.Response(status=403, text="revoked")
        if behaviour == "trickle":
            response = web.StreamResponse(
                headers={"Content-Type": "application/vnd.gitlab-workhorse+json"}
            )
            await response.prepare(request)
            # The fake's pace (the attack itself), not a test synchronisation.
            while True:
                await response.write(b" ")
                await asyncio.sleep(TRICKLE_EVERY)
        return await super()._answer(request)


@pytest.fixture
async def auth_api(secret: bytes, kube: Kube) -> AsyncIterator[FakeAuthApi]:
    async with PerUserAuthApi(secret) as api:
        api.channel = gitlab_channel(kube)
        yield api


POLLS = {
    "authorization": {
        "timeout": f"{TIMEOUT}s",
        "poll_interval": f"{INTERVAL}s",
        "poll_jitter": JITTER,
        "poll_failure_grace": GRACE,
    }
}


async def _open(browser: aiohttp.ClientSession, url: str, user: str) -> Term:
    return await open_term(browser, url, TERMINAL_PROXY, headers={"Cookie": f"user={user}"})


async def test_trickling_answer_fails_closed(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: PerUserAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """The API starts trickling its re-poll answers: the session ends with 4003 within
    grace × (interval + timeout), not never."""
    server = await make_gateway(**POLLS)
    term = await _open(browser, str(server.make_url(ENV_PATH)), "slow")
    await kube.next_session()
    auth_api.behaviour["slow"] = "trickle"
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, reason = await term.wait_closed(timeout=FAIL_CLOSED_WITHIN + 10)
    elapsed = loop.time() - started
    assert (code, reason) == (4003, "authorization unavailable")
    assert elapsed < FAIL_CLOSED_WITHIN, elapsed


async def test_slow_answers_filling_every_slot_do_not_stop_revocation(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: PerUserAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """MAX_REPOLLS sessions whose re-polls trickle hold every re-poll slot; a revoked
    user's session still ends (revoked, or failed closed) within the bound."""
    server = await make_gateway(**POLLS)
    url = str(server.make_url(ENV_PATH))
    slow = [await _open(browser, url, f"slow-{i}") for i in range(MAX_REPOLLS)]
    revoked = await _open(browser, url, "revoked")
    for _ in range(MAX_REPOLLS + 1):
        await kube.next_session()
    for i in range(MAX_REPOLLS):
        auth_api.behaviour[f"slow-{i}"] = "trickle"
    # Let the trickling re-polls take the slots first (the first of them has asked).
    await auth_api.wait_requests(MAX_REPOLLS + 2)
    auth_api.behaviour["revoked"] = "deny"
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, _ = await revoked.wait_closed(timeout=FAIL_CLOSED_WITHIN + 10)
    elapsed = loop.time() - started
    assert code in (4001, 4003)
    assert elapsed < FAIL_CLOSED_WITHIN, elapsed
    for term in slow:
        assert await term.wait_closed(timeout=FAIL_CLOSED_WITHIN + 10) == (
            4003,
            "authorization unavailable",
        )
