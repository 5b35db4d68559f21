"""The session core without sockets: the relay, resume phases, the deadline with warning
and extension, re-poll outcomes and the link set, driven through in-memory fake sockets
(tests/fakes/sockets.py) and a fake authorizer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from terminal_proxy.authorization import BrowserRequest, Grant, PassBack
from terminal_proxy.channel import ConnectionDetails
from terminal_proxy.config import AuthorizationConfig, SessionConfig
from terminal_proxy.errors import AuthorizationUnavailable
from terminal_proxy.protocols import TERMINAL_PROXY, Resume, Role, codec_for
from terminal_proxy.session.links import DirectLink
from terminal_proxy.session.relay import Session
from terminal_proxy.session.resumable import Phase, ResumableLink
from terminal_proxy.session.stop import Stop, StopReason
from terminal_proxy.session.timers import Repoller
from tests.fakes.sockets import FakeSocket

GITLAB = "terminal.gitlab.com"
GRANT = Grant(ConnectionDetails(url="wss://upstream.example/exec", subprotocols=(GITLAB,)))
REQUEST = BrowserRequest(path="/x/terminal.ws", query_string="", headers=())


class FakeAuthorizer:
    """Answers re-polls and extensions with ``answer`` (a Grant, PassBack or exception)."""

    def __init__(self, answer: Grant | PassBack | Exception = GRANT) -> None:
        self.answer = answer
        self.asked = 0
        self.release: asyncio.Event | None = None

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        raise NotImplementedError

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        self.asked += 1
        if self.release is not None:
            await self.release.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def aclose(self) -> None:
        pass


Settings = tuple[SessionConfig, AuthorizationConfig]


def settings(**values: float) -> Settings:
    """Session settings for a test: the session section's keys, and the re-poll's from the
    authorization section (re-polls off unless poll_interval is given)."""
    interval = values.pop("poll_interval", 0.0)
    jitter = values.pop("poll_jitter", 0.1)
    session = SessionConfig(**{"close_timeout": 1.0, **values})  # type: ignore[arg-type]
    return session, AuthorizationConfig(poll_interval=interval, poll_jitter=jitter)


def make_session(
    browser_protocol: str = GITLAB,
    *,
    limits: Settings | None = None,
    authorizer: FakeAuthorizer | None = None,
    grant: Grant = GRANT,
) -> tuple[Session, FakeSocket, FakeSocket]:
    browser, upstream = FakeSocket("browser"), FakeSocket("upstream")
    session = Session(
        session_id="s1",
        browser=browser,
        browser_codec=codec_for(browser_protocol, Role.SERVER),
        upstream=upstream,
        upstream_codec=codec_for(GITLAB, Role.CLIENT),
        authorizer=authorizer or FakeAuthorizer(),
        request=REQUEST,
        grant=grant,
        limits=(limits or settings())[0],
        polling=(limits or settings())[1],
        shutdown=asyncio.Event(),
    )
    return session, browser, upstream


async def within(awaitable: Awaitable[Stop], seconds: float = 5) -> Stop:
    async with asyncio.timeout(seconds):
        return await awaitable


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (each pass lets the session run)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0)


def controls(ws: FakeSocket) -> list[dict[str, object]]:
    return [json.loads(text) for text in ws.texts()]


def has_control(kind: str, count: int = 1) -> Callable[[FakeSocket], bool]:
    return lambda ws: sum(1 for c in controls(ws) if c["type"] == kind) >= count


# The relay ------------------------------------------------------------------------------


async def test_relays_both_ways_and_upstream_close_ends_after_all_output() -> None:
    session, browser, upstream = make_session()
    run = asyncio.ensure_future(session.run())
    browser.feed(b"ls\r")
    await upstream.wait_sent(lambda ws: ws.payloads() == b"ls\r")
    upstream.feed(b"one ")
    upstream.feed(b"two")
    upstream.peer_close(1000)
    stop = await within(run)
    assert stop.reason is StopReason.UPSTREAM_CLOSED
    assert browser.payloads() == b"one two"
    assert browser.close_code == 1000
    assert session.traffic.bytes_in == 3
    assert session.traffic.bytes_out == len(b"one two")


async def test_a_browser_that_cannot_be_written_to_ends_the_session_as_browser_left() -> None:
    session, browser, upstream = make_session()
    run = asyncio.ensure_future(session.run())
    browser.broken = True
    upstream.feed(b"output nobody reads")
    stop = await within(run)
    assert stop == Stop(StopReason.BROWSER_LEFT, "browser connection lost")
    assert upstream.close_code == 1000


async def test_stoppers_verdict_closes_both_sides_with_its_codes() -> None:
    session, browser, upstream = make_session()
    run = asyncio.ensure_future(session.run())
    session.shut_down()
    stop = await within(run)
    assert stop.reason is StopReason.SHUTDOWN
    assert (browser.close_code, upstream.close_code) == (1001, 1001)
    assert session.done.done()


# The link set (ready for more than one browser) -----------------------------------------


async def test_output_reaches_every_link_and_a_failing_extra_link_only_leaves() -> None:
    session, browser, upstream = make_session()
    viewer = FakeSocket("viewer")
    extra = DirectLink(viewer, codec_for(GITLAB, Role.SERVER), session.traffic, 1)
    session.links.add(extra)
    run = asyncio.ensure_future(session.run())
    upstream.feed(b"seen by both")
    await viewer.wait_sent(lambda ws: ws.payloads() == b"seen by both")
    assert browser.payloads() == b"seen by both"
    viewer.broken = True
    upstream.feed(b"!")
    await browser.wait_sent(lambda ws: ws.payloads().endswith(b"!"))
    assert len(session.links) == 1
    upstream.peer_close(1000)
    assert (await within(run)).reason is StopReason.UPSTREAM_CLOSED
    assert not viewer.closed  # it had left; the session closes only the links it has


# Resume phases --------------------------------------------------------------------------


def resumable_limits(**kwargs: float) -> Settings:
    return settings(**{"resume_grace": 30.0, **kwargs})


async def test_resume_phases_detach_attach_replay_and_single_use_tokens() -> None:
    session, browser, upstream = make_session(TERMINAL_PROXY, limits=resumable_limits())
    link = session.resume
    assert isinstance(link, ResumableLink)
    run = asyncio.ensure_future(session.run())
    await browser.wait_sent(has_control("hello"))
    token = str(controls(browser)[0]["token"])
    upstream.feed(b"before ")
    await browser.wait_sent(lambda ws: ws.payloads() == b"before ")
    assert link.phase is Phase.ATTACHED

    browser.hang_up()
    upstream.feed(b"while away")
    # Output while detached is kept for the replay, not lost.
    await until(lambda: link.phase is Phase.DETACHED and link._replay.end == 17)
    assert session.detached

    assert link.take_token("wrong") is None
    digest = link.take_token(token)
    assert digest is not None
    assert link.take_token(token) is None  # single use
    second = FakeSocket("second")
    released = await link.attach(second, Resume("s1", token, received=7, sent=0), 0, None)
    assert link.phase is Phase.ATTACHED and link.resumes == 1
    hello = controls(second)[0]
    assert hello["type"] == "hello" and hello["resumed"] is True and hello["offset"] == 7
    assert second.payloads() == b"while away"
    assert not released.done()

    upstream.peer_close(1000)
    assert (await within(run)).reason is StopReason.UPSTREAM_CLOSED
    assert released.done()
    assert second.close_code == 1000


async def test_impossible_offsets_are_refused_and_the_link_stays_resumable() -> None:
    session, browser, _ = make_session(TERMINAL_PROXY, limits=resumable_limits())
    link = session.resume
    assert link is not None
    run = asyncio.ensure_future(session.run())
    await browser.wait_sent(has_control("hello"))
    with pytest.raises(ValueError, match="received 99 > produced 0"):
        await link.attach(FakeSocket(), Resume("s1", "t", received=99, sent=0), 0, None)
    assert link.phase is Phase.ATTACHED and link.accepting
    session.shut_down()
    await within(run)
    assert not link.accepting


async def test_no_resume_within_the_grace_ends_the_session() -> None:
    limits = resumable_limits(resume_grace=0.05)
    session, browser, _ = make_session(TERMINAL_PROXY, limits=limits)
    run = asyncio.ensure_future(session.run())
    await browser.wait_sent(has_control("hello"))
    browser.hang_up()
    stop = await within(run)
    assert stop == Stop(StopReason.RESUME_EXPIRED, "no resume within 0.05s")


async def test_exit_while_detached_lingers_and_reaches_the_returning_browser() -> None:
    session, browser, upstream = make_session(TERMINAL_PROXY, limits=resumable_limits())
    link = session.resume
    assert link is not None
    run = asyncio.ensure_future(session.run())
    await browser.wait_sent(has_control("hello"))
    token = str(controls(browser)[0]["token"])
    browser.hang_up()
    upstream.feed(b"bye")
    upstream.peer_close(1000)
    await until(lambda: link.phase is Phase.LINGERING)
    assert link.take_token(token) is not None
    back = FakeSocket("back")
    await link.attach(back, Resume("s1", token, received=0, sent=0), 0, None)
    stop = await within(run)
    assert stop.reason is StopReason.UPSTREAM_CLOSED
    assert back.payloads() == b"bye"
    assert back.close_code == 1000


# Deadline, warning, extension -----------------------------------------------------------


async def test_time_limit_warns_then_extends_at_most_max_extensions_times() -> None:
    limits = settings(
        max_duration=30,
        expiry_warning=30,
        extension=60,
        max_extensions=1,
    )
    authorizer = FakeAuthorizer()
    authorizer.release = asyncio.Event()
    session, browser, _ = make_session(TERMINAL_PROXY, limits=limits, authorizer=authorizer)
    run = asyncio.ensure_future(session.run())
    await browser.wait_sent(has_control("expiry"))
    warning = next(c for c in controls(browser) if c["type"] == "expiry")
    assert warning["extendable"] is True
    for _ in range(20):
        browser.feed('{"type":"extend"}')
    await until(lambda: authorizer.asked >= 1)
    authorizer.release.set()
    await browser.wait_sent(has_control("extension", 20))
    answers = [c for c in controls(browser) if c["type"] == "extension"]
    assert [a["granted"] for a in answers].count(True) == 1
    assert session.deadline is not None and session.deadline.extensions == 1
    assert session.deadline.total == pytest.approx(90, abs=1)
    session.shut_down()
    await within(run)


async def test_time_limit_ends_the_session_with_4004() -> None:
    limits = settings(max_duration=0.05)
    session, browser, _ = make_session(limits=limits)
    stop = await within(session.run())
    assert stop.reason is StopReason.TIME_LIMIT
    assert browser.close_code == 4004


# Re-poll outcomes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "verdict"),
    [
        ([GRANT], None),
        ([PassBack(403, (), b"")], Stop(StopReason.REVOKED, "authorization answered 403")),
        (
            [Grant(GRANT.details, user="someone else")],
            Stop(StopReason.CHANGED, "re-authorization returned other details"),
        ),
        ([PassBack(502, (), b"")], None),
        ([PassBack(502, (), b""), PassBack(502, (), b"")], Stop(StopReason.AUTH_UNAVAILABLE)),
        ([AuthorizationUnavailable("down"), GRANT, AuthorizationUnavailable("down")], None),
        (
            [AuthorizationUnavailable("down"), AuthorizationUnavailable("down")],
            Stop(StopReason.AUTH_UNAVAILABLE),
        ),
    ],
)
async def test_repoll_outcomes(
    answers: list[Grant | PassBack | Exception], verdict: Stop | None
) -> None:
    pending = list(answers)

    async def reauthorize() -> Grant | PassBack:
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    verdicts: list[Stop] = []
    poller = Repoller(
        reauthorize,
        GRANT,
        interval=60,
        jitter=0,
        failure_grace=2,
        expire=verdicts.append,
        stopping=lambda: False,
        session_id="s1",
    )
    last = None
    for _ in answers:
        last = await poller.once()
    if verdict is None or verdict.reason is not StopReason.AUTH_UNAVAILABLE:
        assert last == verdict
    else:
        assert last is not None and last.reason is StopReason.AUTH_UNAVAILABLE


async def test_a_revoking_repoll_ends_a_running_session_with_4001() -> None:
    limits = settings(poll_interval=0.01, poll_jitter=0)
    authorizer = FakeAuthorizer(PassBack(403, (), b""))
    session, browser, _ = make_session(limits=limits, authorizer=authorizer)
    stop = await within(session.run())
    assert stop == Stop(StopReason.REVOKED, "authorization answered 403")
    assert browser.close_code == 4001


def test_pong_timeout_is_set_where_aiohttp_has_it_and_skipped_where_not() -> None:
    from aiohttp import web

    from terminal_proxy.session.sockets import set_pong_timeout

    ws = web.WebSocketResponse(heartbeat=10)
    assert set_pong_timeout(ws, 3.0) is True
    assert ws._pong_heartbeat == 3.0
    assert set_pong_timeout(FakeSocket(), 3.0) is False


class FakeLink:
    """A browser link with no socket at all: records what the hub gives it."""

    codec = codec_for(TERMINAL_PROXY, Role.SERVER)
    resumes = 0
    detached = False

    def __init__(self, *, fail: bool = False) -> None:
        self.latest = FakeSocket("fake-link")
        self.output = bytearray()
        self.events: list[object] = []
        self.fail = fail
        self.closed_with: Stop | None = None

    async def open(self, expires_in: float | None) -> bool:
        return True

    async def send_output(self, data: bytes, stream: int) -> bool:
        self.output += data
        return not self.fail

    async def send_event(self, event: object) -> bool:
        self.events.append(event)
        return not self.fail

    async def receive(self) -> object:
        raise AssertionError("a viewer's input is never read")

    def left(self, msg: object) -> Stop:
        raise AssertionError("never read")

    def acked(self, received: int) -> None:
        pass

    def begin_end(self) -> None:
        pass

    async def linger(self, stopped: object) -> None:
        pass

    async def close(self, stop: Stop) -> None:
        self.closed_with = stop

    def finish(self) -> None:
        pass


async def test_the_hub_serves_any_link_output_events_and_the_end() -> None:
    session, _, upstream = make_session()
    viewer, broken = FakeLink(), FakeLink(fail=True)
    session.links.add(viewer)
    session.links.add(broken)
    run = asyncio.ensure_future(session.run())
    upstream.feed(b"hello viewers")
    await until(lambda: bytes(viewer.output) == b"hello viewers")
    assert len(session.links) == 2  # the failing link left; the owner and the viewer stay
    session.shut_down()
    await within(run)
    assert viewer.closed_with is not None and viewer.closed_with.reason is StopReason.SHUTDOWN
    assert broken.closed_with is None
