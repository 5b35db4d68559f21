"""Hardening of ``?resume=`` (issue 11, items 2 and 6): a resume is authorized and
counted against the limits before the upgrade; a failed resume never costs the owner the
session.

The authorization API here is the real fake (tests/fakes/auth_api.py) that also checks
the browser's cookie, as a web app does: without ``session=alice`` it answers 401.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from terminal_proxy.app import GATEWAY
from terminal_proxy.protocols import TERMINAL_PROXY, Resume
from tests.conftest import ENV_PATH, GatewayFactory, Kube, gitlab_channel
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import Term, drop, open_term, resume_term, wait_hello
from tests.test_production import use_native

COOKIE = {"Cookie": "session=alice"}


class CookieAuthApi(FakeAuthApi):
    """The fake authorization API, refusing requests without the signed-in cookie."""

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        answer = await super()._answer(request)
        if "session=alice" not in request.headers.get("Cookie", ""):
            return web.Response(status=401, text="sign in first")
        return answer


@pytest.fixture
async def auth_api(secret: bytes, kube: Kube) -> AsyncIterator[FakeAuthApi]:
    async with CookieAuthApi(secret=secret) as api:
        api.channel = gitlab_channel(kube)
        yield api


async def _open(browser: aiohttp.ClientSession, server: TestServer) -> tuple[Term, str]:
    url = str(server.make_url(ENV_PATH))
    term = await open_term(browser, url, TERMINAL_PROXY, headers=COOKIE)
    await wait_hello(term)
    return term, url


async def _resume_status(
    browser: aiohttp.ClientSession, url: str, session_id: str, headers: dict[str, str] | None
) -> tuple[int, str]:
    """A resume upgrade request (no id: a new terminal): the HTTP status and body of its
    refusal (101: upgraded)."""
    hdrs = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": TERMINAL_PROXY,
        **(headers or {}),
    }
    target = f"{url}?resume={session_id}" if session_id else url
    async with browser.get(target, headers=hdrs) as resp:
        if resp.status == 101:
            resp.close()
            return 101, ""
        return resp.status, await resp.text()


async def test_cookieless_resume_flood_is_refused_before_the_upgrade(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """200 cookie-less resumes of a live session while the authorization API is slow:
    max_pending_handshakes of them reach the API, the rest get 503 at once, and the API
    refuses those few with its own 401. None is upgraded; no slot stays taken."""
    server = await make_gateway(limits={"max_pending_handshakes": 8})
    gateway = server.app[GATEWAY]
    term, url = await _open(browser, server)
    await kube.next_session()
    assert term.hello is not None
    drop(term)
    auth_api.set_mode("stall")
    attempts = [
        asyncio.ensure_future(_resume_status(browser, url, term.hello.session, None))
        for _ in range(200)
    ]
    await auth_api.wait_requests(1 + 8)
    # Everything but the 8 waiting for the authorization was refused by the limit.
    async with asyncio.timeout(10):
        while sum(a.done() for a in attempts) < 192:
            waiting = [a for a in attempts if not a.done()]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    assert gateway.registry.pending == 8
    auth_api.set_mode("ok")
    results = await asyncio.gather(*attempts)
    statuses = sorted(status for status, _ in results)
    assert statuses == [401] * 8 + [503] * 192
    assert len(auth_api.requests) == 1 + 8
    assert gateway.registry.pending == 0 and gateway.registry.resuming == 0
    # The owner still resumes.
    back = await resume_term(browser, url, term, headers=COOKIE)
    assert back.hello is not None and back.hello.resumed
    await back.send_stdin(b"echo owner\r")
    await back.read_until(b"\r\nowner\r\n")


async def test_made_up_ids_are_answered_before_the_upgrade_without_asking(
    make_gateway: GatewayFactory, kube: Kube, auth_api: FakeAuthApi, browser: aiohttp.ClientSession
) -> None:
    """A resume of an id that never lived here: 404 with the reason, before the upgrade,
    and the authorization API is not asked (a flood of made-up ids costs it nothing).
    A session whose grace ran out: 410."""
    server = await make_gateway(session={"resume_grace": "200ms"})
    url = str(server.make_url(ENV_PATH))
    results = await asyncio.gather(
        *(_resume_status(browser, url, f"{i:016x}", None) for i in range(100))
    )
    assert {status for status, _ in results} == {404}
    status, body = await _resume_status(browser, url, "x", COOKIE)
    assert status == 404 and body.startswith("no such session to resume\n")
    assert auth_api.requests == []

    term, _ = await _open(browser, server)
    upstream = await kube.next_session()
    assert term.hello is not None
    drop(term)
    await upstream.wait_closed()
    status, _ = await _resume_status(browser, url, term.hello.session, COOKIE)
    assert status == 410


async def test_resume_counts_against_max_sessions_only_when_it_adds_one(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """At limits.max_sessions a new terminal and a resume of an unknown id get 503; the
    owner's resume of the session living here still works (it adds no session)."""
    server = await make_gateway(limits={"max_sessions": 1})
    term, url = await _open(browser, server)
    await kube.next_session()
    assert term.hello is not None
    drop(term)
    assert (await _resume_status(browser, url, "0123456789abcdef", COOKIE))[0] == 503
    assert (await _resume_status(browser, url, "", COOKIE))[0] == 503  # a new terminal
    back = await resume_term(browser, url, term, headers=COOKIE)
    assert back.hello is not None and back.hello.resumed


async def test_another_user_is_refused_before_the_upgrade(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """The authorization names another user: 403 before the upgrade; the API's own
    refusal is passed back; the owner's token stays valid."""
    use_native(auth_api, "alice")
    server = await make_gateway(authorization={"contract": "native"})
    term, url = await _open(browser, server)
    await kube.next_session()
    assert term.hello is not None
    drop(term)
    auth_api.user = {"username": "mallory"}
    status, _ = await _resume_status(browser, url, term.hello.session, COOKIE)
    assert status == 403
    auth_api.user = {"username": "alice"}
    auth_api.set_mode("deny")
    status, _ = await _resume_status(browser, url, term.hello.session, COOKIE)
    assert status == 403
    auth_api.set_mode("ok")
    back = await resume_term(browser, url, term, headers=COOKIE)
    assert back.hello is not None and back.hello.resumed


async def test_impossible_offsets_do_not_cost_the_owner_the_session(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """The right token with ``received`` beyond what was produced (or ``sent`` below what
    was delivered): that socket gets 1002 with the reason; the token stays valid and the
    owner's correct resume carries on with the same shell."""
    server = await make_gateway()
    term, url = await _open(browser, server)
    await kube.next_session()
    await term.send_stdin(b"echo first\r")
    await term.read_until(b"\r\nfirst\r\n")
    assert term.hello is not None
    drop(term)
    produced = term.offset
    bad = dataclasses.replace(term, hello=term.hello, offset=produced + 1_000_000)
    beyond = await resume_term(browser, url, bad, headers=COOKIE)
    code, reason = await beyond.wait_closed()
    assert code == 1002
    assert (
        reason == f"protocol error: resume: received {produced + 1_000_000} > produced {produced}"
    )
    # The same token, offsets right: resumed, same shell.
    back = await resume_term(browser, url, term, headers=COOKIE)
    assert back.hello is not None and back.hello.resumed
    await back.send_stdin(b"echo second\r")
    await back.read_until(b"\r\nsecond\r\n")
    # An attached session is not disturbed by a bad resume either.
    ws = await browser.ws_connect(
        f"{url}?resume={term.hello.session}", protocols=[TERMINAL_PROXY], headers=COOKIE
    )
    assert back.hello is not None
    intruder = Term(ws, TERMINAL_PROXY)
    await intruder.send_event(Resume(back.hello.session, back.hello.token, received=0, sent=0))
    code, reason = await intruder.wait_closed()
    assert code == 1002 and reason.startswith("protocol error: resume: sent 0 < delivered")
    await back.send_stdin(b"echo third\r")
    await back.read_until(b"\r\nthird\r\n")
