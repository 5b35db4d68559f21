"""Joining a live ``v1.terminal-proxy`` session as a viewer or writer (docs/sharing.md).

The browser opens the terminal route with ``?join=<session id>`` (a policy join: the
authorization decides the role) or ``?join=<session id>&invitation=<id>`` (the owner's
invitation names the role; the token follows as the first message, never in a URL).
Nothing is dialled. Before the upgrade: the session must live here and be shareable (404,
410), the invitation must be open (404, 410), the route's authorizer must decide joins
(GitLab's contract cannot: 403) and let this user join, and the session must have room
(``limits.max_participants``: 503). After it: the invitation's token (4009 when wrong),
then the participant's hello, the screen snapshot and live output.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from .authorization import BrowserRequest, JoinAuthorizer, JoinGrant, JoinRequest, PassBack
from .config import Config
from .errors import AuthorizationError, AuthorizationTimeout, LimitReached, ResumeRefused
from .gateway import Gateway, Services
from .protocols import Event, Hello, JoinToken, Opcode, ProtocolError, Resume, Role, codec_for
from .session.invitations import InvitationState
from .session.participants import Participant
from .session.relay import Session
from .session.sharing import Sharing
from .session.sockets import Socket, close_socket
from .session.stop import Stop, StopReason

__all__ = ["Joined", "join_session", "resume_participant", "take_part"]

log = logging.getLogger("terminal_proxy.session")

# How long the first message may take when limits.handshake_timeout is off.
FIRST_MESSAGE_TIMEOUT = 30.0


def _refused(status: int, text: str) -> ResumeRefused:
    return ResumeRefused(text, status=status)


async def join_session(
    request: web.Request,
    gateway: Gateway,
    services: Services,
    route: str,
    request_id: str,
    browser_request: BrowserRequest,
    browser: web.WebSocketResponse,
) -> web.StreamResponse | Joined:
    """Check, authorize, upgrade, prove the invitation: a refusal (a response, or the
    closed socket), or the participant ready to ``take_part``."""
    session_id = request.query.get("join", "")
    invitation = request.query.get("invitation") or None
    config = gateway.config
    registry = gateway.registry
    joins = gateway.metrics.joins
    fields: dict[str, object] = {"request_id": request_id, "route": route, "session": session_id}

    session = registry.resumable.get(session_id)
    sharing = None if session is None else session.share()
    if session is None or sharing is None:
        joins.labels("unknown").inc()
        ended = registry.ended.get(session_id)
        if ended is not None:
            raise _refused(410, f"session ended: {Stop(ended).browser_reason}")
        raise _refused(404, "no such session to join")
    now = time.monotonic()
    if invitation is not None:
        state = sharing.invitations.state(invitation, now)
        if state is InvitationState.UNKNOWN:
            joins.labels("invitation_unknown").inc()
            raise _refused(404, "no such invitation")
        if state is not InvitationState.OPEN:
            joins.labels("invitation_closed").inc()
            why = "expired" if state is InvitationState.EXPIRED else "used up"
            raise _refused(410, f"invitation {why}")
    invited = None if invitation is None else sharing.invitations.role(invitation)
    fields["client"] = browser_request.client_ip
    anonymous = invited == "viewer" and route in config.sharing.anonymous_viewers
    if anonymous:
        # The route lets a viewer invitation admit anyone holding its token.
        answer: JoinGrant | PassBack = JoinGrant("viewer")
    else:
        authorizer = services.authorizer
        if not isinstance(authorizer, JoinAuthorizer):
            joins.labels("forbidden").inc()
            raise _refused(403, "joining is not supported on this route")
        join = JoinRequest(session_id, session.grant.user, invitation)
        try:
            async with asyncio.timeout(config.limits.handshake_timeout or None):
                answer = await authorizer.authorize_join(browser_request, join)
        except TimeoutError:
            joins.labels("auth_unavailable").inc()
            raise AuthorizationTimeout(
                "authorization took too long", detail="join: authorization exceeded the timeout"
            ) from None
        except AuthorizationError:
            joins.labels("auth_unavailable").inc()
            raise
    if isinstance(answer, PassBack):
        joins.labels("forbidden").inc()
        log.info("join refused by the authorization", extra={"fields": fields})
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    role = _role(answer.role, invited)
    if role is None:
        joins.labels("forbidden").inc()
        raise _refused(403, "the authorization granted no role for this join")
    if sharing.full():
        joins.labels("full").inc()
        raise LimitReached(
            "participants",
            503,
            f"this terminal has the most participants it allows ({sharing.max_participants})",
        )

    await browser.prepare(request)
    gateway.metrics.handshakes.labels("101").inc()
    if invitation is not None:
        token = await _join_token(browser, config.limits.handshake_timeout)
        if isinstance(token, Stop):
            joins.labels(token.reason.value).inc()
            await close_socket(browser, token, config.session.close_timeout)
            return browser
        used = sharing.invitations.use(invitation, token, time.monotonic())
        if used is None:
            joins.labels("bad_token").inc()
            stop = Stop(StopReason.JOIN_BAD_TOKEN)
            await close_socket(browser, stop, config.session.close_timeout)
            log.info("join refused: invalid token", extra={"fields": fields})
            return browser
        session.audit("invitation_used", {"session": session_id, "invitation": invitation})
    participant = Participant(
        participant_id=sharing.new_participant_id(),
        user=answer.user
        or (f"anonymous ({browser_request.client_ip})" if anonymous else browser_request.client_ip),
        role=role,
        ws=browser,
        codec=codec_for(browser.ws_protocol or "", Role.SERVER),
        limit=config.session.max_buffer,
        close_timeout=config.session.close_timeout,
        session_id=session_id,
    )
    participant.anonymous = anonymous
    joins.labels("joined").inc()
    log.info(
        "participant joined",
        extra={"fields": fields | {"participant": participant.id, "role": role}},
    )
    return Joined(
        sharing, participant, session_id, "policy" if invitation is None else "invitation"
    )


def _role(granted: str | None, invited: str | None) -> str | None:
    """An invitation's role capped by the authorization's; else the authorization's."""
    if invited is None:
        return granted
    if granted == "viewer":
        return "viewer"
    return invited


@dataclass(frozen=True, slots=True)
class Joined:
    """A participant upgraded and admitted, about to take part."""

    sharing: Sharing
    participant: Participant
    session_id: str
    how: str


async def take_part(joined: Joined) -> None:
    """Hello, then the participant's messages until its socket or the session ends."""
    sharing, participant = joined.sharing, joined.participant
    await _participate(
        sharing, participant, joined.session_id, lambda: sharing.join(participant, joined.how)
    )


async def _participate(
    sharing: Sharing,
    participant: Participant,
    session_id: str,
    start: Callable[[], None],
    *,
    resumed: bool = False,
) -> None:
    """One socket of a participant: hello, ``start`` (its output begins with a screen),
    then its messages until it ends. A socket that ends without a normal close (1000)
    detaches the participant for the resume grace."""
    ws = participant.ws
    hello = Hello(
        session_id,
        participant.tokens.new() if sharing.grace else "",
        offset=sharing.offset,
        resumed=resumed,
        resume_grace=sharing.grace or None,
        role=participant.role,
        participant=participant.id,
    )
    for opcode, frame in participant.codec.encode(hello):
        await ws.send_frame(frame, WSMsgType(opcode))
    start()
    why, clean = "left", False
    try:
        while True:
            msg = await ws.receive()
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                clean = msg.type is WSMsgType.CLOSE and msg.data == 1000
                break
            payload = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            opcode = Opcode.TEXT if msg.type is WSMsgType.TEXT else Opcode.BINARY
            try:
                events = participant.codec.decode(opcode, payload)
            except ProtocolError as exc:
                why, clean = "protocol error", True
                await participant.close(Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc)))
                break
            for event in events:
                await sharing.from_participant(participant, event)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the connection drops: detach, as without it.
        await _after(sharing, participant, ws, why, clean=False)
        raise
    await _after(sharing, participant, ws, why, clean=clean)


async def _after(
    sharing: Sharing, participant: Participant, ws: Socket, why: str, *, clean: bool
) -> None:
    if participant.ws is not ws:
        return  # taken over by a resumed socket
    if clean or participant.closing is not None or not sharing.grace:
        sharing.leave(participant, why)
        await participant.stop_sending()
        return
    await participant.pause()
    participant.detach(sharing.grace, lambda: sharing.leave(participant, "resume grace expired"))
    log.info(
        "participant detached",
        extra={"fields": {"session": sharing.session_id, "participant": participant.id}},
    )


async def resume_participant(
    request: web.Request,
    gateway: Gateway,
    services: Services,
    request_id: str,
    browser_request: BrowserRequest,
    browser: web.WebSocketResponse,
) -> web.StreamResponse | Callable[[], Awaitable[None]]:
    """``?resume=<session id>&participant=<id>``: a participant's new socket. Before the
    upgrade: the participant must be there (404), and the authorization must still let
    the same user join (its answer, or 403). After it: the token of its last hello (4009
    when wrong). Returns a refusal, or what runs the participant on this socket (it keeps
    its role and starts from a fresh screen)."""
    session_id = request.query.get("resume", "")
    participant_id = request.query.get("participant", "")
    config = gateway.config
    session = gateway.registry.resumable.get(session_id)
    sharing = None if session is None else session.sharing
    participant = None if sharing is None else sharing.participants.get(participant_id)
    if session is None or sharing is None or participant is None:
        raise _refused(404, "no such participant to resume")
    if not participant.anonymous:
        refused = await _same_user(
            services, config, browser_request, session_id, session, participant
        )
        if refused is not None:
            return refused
    await browser.prepare(request)
    gateway.metrics.handshakes.labels("101").inc()
    first = await _first(browser, config.limits.handshake_timeout, "resume")
    if not isinstance(first, Resume):
        if not isinstance(first, Stop):
            first = Stop(StopReason.BROWSER_PROTOCOL_ERROR, "the first message must be 'resume'")
        await close_socket(browser, first, config.session.close_timeout)
        return browser
    if first.session != session_id or participant.tokens.take(first.token) is None:
        await close_socket(browser, Stop(StopReason.RESUME_BAD_TOKEN), config.session.close_timeout)
        return browser
    if (
        participant.closing is not None
        or sharing.participants.get(participant_id) is not participant
    ):
        await close_socket(browser, Stop(StopReason.RESUME_UNKNOWN), config.session.close_timeout)
        return browser
    old = participant.ws
    if not participant.detached:
        await participant.pause()
    participant.ws = browser
    if old is not browser and not old.closed:
        await close_socket(old, Stop(StopReason.TAKEN_OVER), config.session.close_timeout)
    log.info(
        "participant resumed",
        extra={
            "fields": {
                "request_id": request_id,
                "session": session_id,
                "participant": participant_id,
            }
        },
    )

    async def take_part_again() -> None:
        await _participate(
            sharing,
            participant,
            session_id,
            lambda: participant.attach(browser, sharing),
            resumed=True,
        )

    return take_part_again


async def _same_user(
    services: Services,
    config: Config,
    browser_request: BrowserRequest,
    session_id: str,
    session: Session,
    participant: Participant,
) -> web.Response | None:
    """A participant's resume: the authorization must still let the same user join."""
    authorizer = services.authorizer
    if not isinstance(authorizer, JoinAuthorizer):
        raise _refused(403, "joining is not supported on this route")
    join = JoinRequest(session_id, session.grant.user, None)
    try:
        async with asyncio.timeout(config.limits.handshake_timeout or None):
            answer = await authorizer.authorize_join(browser_request, join)
    except TimeoutError:
        raise AuthorizationTimeout(
            "authorization took too long", detail="participant resume: authorization timed out"
        ) from None
    if isinstance(answer, PassBack):
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    if (answer.user or browser_request.client_ip) != participant.user:
        raise _refused(403, "resume refused: the authorization names another user")
    return None


async def _first(ws: web.WebSocketResponse, limit: float, kind: str) -> Event | Stop:
    """The one event of the socket's first message (``kind`` names it for the reasons),
    or why there is none: no message in time, the browser gone, a malformed message."""
    codec = codec_for(ws.ws_protocol or "", Role.SERVER)
    try:
        msg = await ws.receive(timeout=limit or FIRST_MESSAGE_TIMEOUT)
    except TimeoutError:
        return Stop(StopReason.BROWSER_PROTOCOL_ERROR, f"no {kind} message in time")
    if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return Stop(StopReason.BROWSER_LEFT, f"browser left before its {kind} message")
    payload = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
    opcode = Opcode.TEXT if msg.type is WSMsgType.TEXT else Opcode.BINARY
    try:
        events = codec.decode(opcode, payload)
    except ProtocolError as exc:
        return Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc))
    if len(events) != 1:
        return Stop(StopReason.BROWSER_PROTOCOL_ERROR, f"the first message must be '{kind}'")
    return events[0]


async def _join_token(ws: web.WebSocketResponse, limit: float) -> str | Stop:
    """The invitation's token from the first message, or why there is none."""
    first = await _first(ws, limit, "join")
    if isinstance(first, JoinToken):
        return first.token
    if isinstance(first, Stop):
        return first
    return Stop(StopReason.BROWSER_PROTOCOL_ERROR, "the first message must be 'join'")
