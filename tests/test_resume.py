"""Resume of v1.terminal-proxy sessions through real servers (docs/browser-protocol.md).

A real drop is ``transport.abort()`` on the test client's socket (no close frame, the
TCP connection just goes), then a new socket resumes with the session id, the output
offset received and the input offset sent. Each refusal has its documented close code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from terminal_proxy.app import GATEWAY
from terminal_proxy.protocols import TERMINAL_PROXY
from tests.conftest import ENV_PATH, GatewayFactory, Kube, gitlab_channel
from tests.fakes.auth_api import FakeAuthApi
from tests.fakes.kube_apiserver import blob_bytes
from tests.support.termclient import Term, drop, open_term, resume_refusal, resume_term, wait_hello
from tests.test_production import use_native


async def _open(
    browser: aiohttp.ClientSession, server: TestServer, **kwargs: Any
) -> tuple[Term, str]:
    url = str(server.make_url(ENV_PATH))
    term = await open_term(browser, url, TERMINAL_PROXY, **kwargs)
    await wait_hello(term)
    return term, url


async def _ended(server: TestServer, session_id: str) -> str:
    """Wait for the session to end; its stop reason."""
    gateway = server.app[GATEWAY]
    session = gateway.registry.resumable.get(session_id)
    if session is None:
        return gateway.registry.ended[session_id].value
    async with asyncio.timeout(10):
        await asyncio.shield(session.done)
    assert session.stop is not None
    return session.stop.reason.value


async def test_hello_then_echo_then_clean_close(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """A new session starts with hello (id, token, offsets 0); a 1000 close ends it."""
    server = await make_gateway()
    term, _ = await _open(browser, server)
    assert term.hello is not None
    assert term.hello.offset == 0 and term.hello.input == 0 and not term.hello.resumed
    assert len(term.hello.token) >= 43  # 256 bits, base64url
    session = await kube.next_session()
    await term.send_stdin(b"echo hi\r")
    await term.read_until(b"hi\r\n")
    await term.ws.close()
    await session.wait_closed()
    assert await _ended(server, term.hello.session) == "browser_left"


async def test_drop_mid_flood_and_resume_is_exact(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """A real drop in the middle of 3 MB of output: the resumed stream is byte-exact and
    the line typed just before the drop runs once."""
    auth_api.channel = gitlab_channel(kube, tty=False)
    server = await make_gateway(session={"resume_buffer": "8MiB"})
    term, url = await _open(browser, server)
    upstream = await kube.next_session()
    await term.send_stdin(b"blob 3000000 7 4093\n")
    async with asyncio.timeout(10):
        while len(term.stdout) < 200_000:
            await term._receive_one()
    await term.send_stdin(b"echo typed-once\n")
    drop(term)
    term = await resume_term(browser, url, term)
    assert term.hello is not None and term.hello.resumed and not term.hello.reset
    expected = blob_bytes(3_000_000, 7) + b"typed-once\n"
    await term.read_until(b"typed-once\n")
    assert hashlib.sha256(term.stdout).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert upstream.stdin_data == b"blob 3000000 7 4093\necho typed-once\n"
    await term.ws.close()
    await upstream.wait_closed()


async def test_second_attach_takes_over(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """A resume while the first socket is still open closes that one with 4006."""
    server = await make_gateway()
    first, url = await _open(browser, server)
    await kube.next_session()
    await first.send_stdin(b"echo one\r")
    await first.read_until(b"one\r\n")
    second = await resume_term(browser, url, first)
    assert second.hello is not None and second.hello.resumed
    assert await first.wait_closed() == (4006, "session resumed on another connection")
    await second.send_stdin(b"echo two\r")
    await second.read_until(b"two\r\n")
    assert bytes(second.stdout) == b"$ echo one\r\none\r\n$ echo two\r\ntwo\r\n$ "


async def test_token_is_single_use_and_rotated(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """A wrong token and a used token get 4009; the rotated one works."""
    server = await make_gateway()
    first, url = await _open(browser, server)
    await kube.next_session()
    assert first.hello is not None
    old_token = first.hello.token
    wrong = await resume_term(browser, url, first, token="A" * 43)
    assert await wrong.wait_closed() == (4009, "resume refused: invalid token")
    drop(first)
    second = await resume_term(browser, url, first)
    assert second.hello is not None and second.hello.token != old_token
    drop(second)
    reused = await resume_term(browser, url, second, token=old_token)
    assert await reused.wait_closed() == (4009, "resume refused: invalid token")
    third = await resume_term(browser, url, second)
    await third.send_stdin(b"echo still-here\r")
    await third.read_until(b"still-here\r\n")


async def test_other_user_is_refused(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """Re-authorization naming another user: 403 before the upgrade; refusing: the API's
    own answer; the token stays valid."""
    use_native(auth_api, "alice")
    server = await make_gateway(authorization={"contract": "native"})
    first, url = await _open(browser, server)
    await kube.next_session()
    drop(first)
    auth_api.user = {"username": "mallory"}
    assert await resume_refusal(browser, url, first) == (
        403,
        "resume refused: the authorization names another user or terminal",
    )
    auth_api.user = {"username": "alice"}
    auth_api.set_mode("deny")
    refused = await resume_refusal(browser, url, first)
    assert refused == (403, "You are not allowed to open this terminal")
    # A refused resume does not use the token up: the right user still gets back in.
    auth_api.set_mode("ok")
    back = await resume_term(browser, url, first)
    assert back.hello is not None and back.hello.resumed
    await back.send_stdin(b"echo back\r")
    await back.read_until(b"\r\nback\r\n")


async def test_unknown_session_and_expired_grace(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """No such session: 404. A session whose grace ran out: 410, upstream closed. Both
    before the upgrade."""
    server = await make_gateway(session={"resume_grace": "200ms"})
    term, url = await _open(browser, server)
    upstream = await kube.next_session()
    assert term.hello is not None
    session_id = term.hello.session
    drop(term)
    assert await _ended(server, session_id) == "resume_expired"
    await upstream.wait_closed()
    late = await resume_refusal(browser, url, term)
    assert late == (410, "session ended: resume grace expired")
    term.hello = dataclasses.replace(term.hello, session="0123456789abcdef")
    assert await resume_refusal(browser, url, term) == (404, "no such session to resume")


async def test_overrun_while_detached_resets_at_a_safe_boundary(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """More output than the buffer while detached, and the process exits: the resume
    gets a reset hello (offset past the lost bytes, at a line start), the kept tail,
    the exit status and 1000 'exit code 0'."""
    auth_api.channel = gitlab_channel(kube, tty=False)
    server = await make_gateway(session={"resume_buffer": "64KiB"})
    term, url = await _open(browser, server)
    upstream = await kube.next_session()
    await term.send_stdin(b"blob 1000000 1 1000; echo marker; exit 0\n")
    drop(term)
    await upstream.wait_closed()
    resumed = await resume_term(browser, url, term)
    assert await resumed.wait_closed() == (1000, "exit code 0")
    hello = resumed.hello
    assert hello is not None and hello.reset and hello.offset > term.offset
    produced = blob_bytes(1_000_000, 1) + b"marker\n"
    # The replay starts at a line start or an escape, never inside a character.
    assert produced[hello.offset - 1] == 0x0A or produced[hello.offset] == 0x1B
    tail = produced[hello.offset :]
    assert bytes(resumed.stdout[len(term.stdout) :]) == tail
    assert 0 < len(tail) <= 64 * 1024
    assert [e.code for e in resumed.exits] == [0]


async def test_detached_session_makes_room_at_the_per_user_limit(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """A user at limits.max_sessions_per_user whose other session is detached (the tab
    was closed or reloaded) gets a new one: the detached session ends (410 later)."""
    use_native(auth_api, "alice")
    server = await make_gateway(
        authorization={"contract": "native"}, limits={"max_sessions_per_user": 1}
    )
    first, url = await _open(browser, server)
    upstream = await kube.next_session()
    assert first.hello is not None
    drop(first)
    second, _ = await _open(browser, server)
    await upstream.wait_closed()
    assert await _ended(server, first.hello.session) == "resume_expired"
    late = await resume_refusal(browser, url, first)
    assert late == (410, "session ended: resume grace expired")
    await kube.next_session()
    await second.send_stdin(b"echo second\r")
    await second.read_until(b"\r\nsecond\r\n")
