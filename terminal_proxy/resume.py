"""Resuming a detached ``v1.terminal-proxy`` session on a new browser socket.

The browser opens the same terminal route with ``?resume=<session id>`` (the id is not a
secret; it lets a load balancer route by session). Nothing is dialled. A resume counts
against ``limits.max_pending_handshakes`` and ``limits.max_sessions`` like a new
terminal (handshake.py). Before the upgrade the session must live here (404, or 410 when
its grace ran out) and the authorization API must still grant this request the session's
own grant (same user, same terminal; else its own answer or 403). Then the socket is
upgraded; its first message must be ``resume`` (session id, single-use token, output
offset received, input offset sent), the token is checked against the stored SHA-256,
and the session's ``ResumableLink`` replays what the browser missed on this socket. A
refusal after the upgrade is a close code of ``docs/close-codes.md``; a refused resume
never uses the token up. See docs/browser-protocol.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from .authorization import BrowserRequest, PassBack
from .errors import AuthorizationError, AuthorizationTimeout, ResumeRefused
from .gateway import Gateway, Services
from .protocols import Opcode, ProtocolError, Resume, Role, codec_for
from .session.links import SessionGone
from .session.relay import Session
from .session.resumable import ResumableLink
from .session.sockets import close_socket
from .session.stop import Stop, StopReason

__all__ = ["FIRST_MESSAGE_TIMEOUT", "resume_session"]

log = logging.getLogger("terminal_proxy.session")

# How long the first message may take when limits.handshake_timeout is off.
FIRST_MESSAGE_TIMEOUT = 30.0

# Closes the upgraded socket with a stop's code and reason (and counts and logs it).
Refuse = Callable[[Stop], Awaitable[tuple[web.StreamResponse, None]]]


async def resume_session(
    request: web.Request,
    gateway: Gateway,
    services: Services,
    route: str,
    request_id: str,
    browser_request: BrowserRequest,
    browser: web.WebSocketResponse,
) -> tuple[web.StreamResponse, asyncio.Future[None] | None]:
    """Check, upgrade, read the resume message, attach.

    Returns the response and, once attached, a future resolved when the session lets this
    socket go (the caller holds its handler until then). A refusal before the upgrade
    raises a GatewayError or returns the authorization API's own answer.
    """
    session_id = request.query.get("resume", "")
    config = gateway.config
    registry = gateway.registry
    fields: dict[str, object] = {"request_id": request_id, "route": route, "session": session_id}
    outcomes = gateway.metrics.resumes

    session = registry.resumable.get(session_id)
    link = None if session is None else session.resume
    if session is None or link is None:
        reason = registry.ended.get(session_id)
        if reason is StopReason.RESUME_EXPIRED:
            outcomes.labels(reason.value).inc()
            raise ResumeRefused(Stop(reason).browser_reason, status=410)
        outcomes.labels(StopReason.RESUME_UNKNOWN.value).inc()
        raise ResumeRefused(Stop(StopReason.RESUME_UNKNOWN).browser_reason, status=404)
    refused = await _authorize(gateway, services, browser_request, session, fields)
    if refused is not None:
        return refused, None

    await browser.prepare(request)
    gateway.metrics.handshakes.labels("101").inc()

    async def refuse(stop: Stop) -> tuple[web.StreamResponse, None]:
        outcomes.labels(stop.reason.value).inc()
        log.info(
            "resume refused",
            extra={"fields": fields | {"stop": stop.reason.value, "detail": stop.detail}},
        )
        await close_socket(browser, stop, config.session.close_timeout)
        return browser, None

    try:
        resume = await _first_message(browser, config.limits.handshake_timeout)
    except ProtocolError as exc:
        return await refuse(Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc)))
    if resume is None:
        outcomes.labels("browser_left").inc()
        return browser, None  # the browser left before saying anything
    if resume.session != session_id:
        return await refuse(
            Stop(StopReason.BROWSER_PROTOCOL_ERROR, "resume: session differs from the URL's")
        )
    if registry.resumable.get(session_id) is not session:
        # It ended while this socket was being upgraded.
        if registry.ended.get(session_id) is StopReason.RESUME_EXPIRED:
            return await refuse(Stop(StopReason.RESUME_EXPIRED))
        return await refuse(Stop(StopReason.RESUME_UNKNOWN, "session ended"))
    return await _attach(link, session, resume, browser, refuse, gateway, services, fields)


async def _attach(
    link: ResumableLink,
    session: Session,
    resume: Resume,
    browser: web.WebSocketResponse,
    refuse: Refuse,
    gateway: Gateway,
    services: Services,
    fields: dict[str, object],
) -> tuple[web.StreamResponse, asyncio.Future[None] | None]:
    """The token checked and used up; the replay sent; the socket attached."""
    digest = link.take_token(resume.token)
    if digest is None:
        return await refuse(Stop(StopReason.RESUME_BAD_TOKEN))
    try:
        released = await link.attach(
            browser, resume, session.traffic.input_offset, session.remaining()
        )
    except SessionGone:
        return await refuse(Stop(StopReason.RESUME_UNKNOWN, "session ended"))
    except ProtocolError as exc:
        # Offsets the session never had: this socket is refused, the owner's session and
        # token stay as they were (a failed resume never costs the owner the shell).
        link.restore_token(digest)
        return await refuse(Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc)))
    fields.update(resumes=link.resumes)
    gateway.metrics.resumes.labels("resumed").inc()
    log.info("session resumed", extra={"fields": fields})
    services.audit.emit("session_resume", fields | {"user": session.grant.user or "-"})
    return browser, released


async def _authorize(
    gateway: Gateway,
    services: Services,
    browser_request: BrowserRequest,
    session: Session,
    fields: dict[str, object],
) -> web.Response | None:
    """Before the upgrade: may this request resume ``session``? None when it may; the
    authorization API's own answer when it refused; raises for everything else."""
    outcomes = gateway.metrics.resumes
    fields["client"] = browser_request.client_ip
    limit = gateway.config.limits.handshake_timeout
    try:
        async with asyncio.timeout(limit or None):
            answer = await services.session_authorizer.reauthorize(browser_request, session.grant)
    except TimeoutError:
        outcomes.labels(StopReason.AUTH_UNAVAILABLE.value).inc()
        raise AuthorizationTimeout(
            "authorization took too long",
            detail="resume: authorization exceeded the handshake timeout",
        ) from None
    except AuthorizationError:
        outcomes.labels(StopReason.AUTH_UNAVAILABLE.value).inc()
        raise
    if isinstance(answer, PassBack):
        failed = answer.status >= 500
        reason = StopReason.AUTH_UNAVAILABLE if failed else StopReason.RESUME_FORBIDDEN
        outcomes.labels(reason.value).inc()
        log.info(
            "resume refused by the authorization",
            extra={"fields": fields | {"status": answer.status}},
        )
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    if answer != session.grant:
        outcomes.labels(StopReason.RESUME_FORBIDDEN.value).inc()
        raise ResumeRefused(
            "resume refused: the authorization names another user or terminal",
            status=403,
        )
    return None


async def _first_message(ws: web.WebSocketResponse, limit: float) -> Resume | None:
    """The resume message, or None when the socket closed first."""
    codec = codec_for(ws.ws_protocol or "", Role.SERVER)
    try:
        msg = await ws.receive(timeout=limit or FIRST_MESSAGE_TIMEOUT)
    except TimeoutError:
        raise ProtocolError("no resume message in time") from None
    if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    payload = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
    opcode = Opcode.TEXT if msg.type is WSMsgType.TEXT else Opcode.BINARY
    events = codec.decode(opcode, payload)
    if len(events) != 1 or not isinstance(events[0], Resume):
        raise ProtocolError("the first message of a resume must be 'resume'")
    return events[0]
