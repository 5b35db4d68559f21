"""Resuming a detached ``v1.terminal-proxy`` session on a new browser socket.

The browser opens the same terminal route with ``?resume=<session id>`` (the id is not a
secret; it lets a load balancer route by session). Nothing is dialled. A resume counts
against ``limits.max_pending_handshakes`` and ``limits.max_sessions`` like a new
terminal (app.py). Before the upgrade the session must live here (404, or 410 when its
grace ran out) and the authorization API must still grant this request the session's own
grant (same user, same terminal; else its own answer or 403). Then the socket is
upgraded; its first message must be ``resume`` (session id, single-use token, output
offset received, input offset sent), the token is checked against the stored SHA-256,
and the session replays what the browser missed on this socket. A refusal after the
upgrade is a close code of ``docs/close-codes.md``; a refused resume never uses the
token up. See docs/browser-protocol.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from .authorization import BrowserRequest, PassBack
from .errors import AuthorizationError, AuthorizationTimeout, ResumeRefused
from .protocols import Opcode, ProtocolError, Resume, Role, codec_for
from .session import Session, SessionGone, Stop, StopReason, close_socket

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["ENDED_KEPT", "remember_end", "resume_session"]

log = logging.getLogger("terminal_proxy.session")

# How many ended session ids the gateway remembers, to answer a late resume precisely.
ENDED_KEPT = 10_000
# How long the first message may take when limits.handshake_timeout is off.
FIRST_MESSAGE_TIMEOUT = 30.0


def remember_end(ended: OrderedDict[str, StopReason], session_id: str, reason: StopReason) -> None:
    ended[session_id] = reason
    while len(ended) > ENDED_KEPT:
        ended.popitem(last=False)


async def resume_session(
    request: web.Request,
    gateway: Gateway,
    route: str,
    request_id: str,
    browser_request: BrowserRequest,
    browser: web.WebSocketResponse,
) -> tuple[web.StreamResponse, asyncio.Future[None] | None]:
    """Check, upgrade, read the resume message, attach.

    Returns the response and, once attached, a future resolved when the session lets this
    socket go (the caller holds its handler until then). Before the upgrade: the session
    must live here (else 404/410) and the authorization must still grant this request the
    session's own grant (else the API's own answer, or 403); only the token, which comes
    in the first message, is checked after the upgrade. A refusal before the upgrade
    raises a GatewayError or returns the authorization API's answer.
    """
    session_id = request.query.get("resume", "")
    config = gateway.config
    close_timeout = config.session.close_timeout
    fields: dict[str, object] = {"request_id": request_id, "route": route, "session": session_id}
    outcomes = gateway.metrics.resumes

    session = gateway.resumable.get(session_id)
    if session is None:
        reason = gateway.ended.get(session_id)
        if reason is StopReason.RESUME_EXPIRED:
            outcomes.labels(reason.value).inc()
            raise ResumeRefused(Stop(reason).browser_reason, status=410)
        outcomes.labels(StopReason.RESUME_UNKNOWN.value).inc()
        raise ResumeRefused(Stop(StopReason.RESUME_UNKNOWN).browser_reason, status=404)
    refused = await _authorize(gateway, browser_request, session, fields)
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
        await close_socket(browser, stop, close_timeout)
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
    if gateway.resumable.get(session_id) is not session:
        # It ended while this socket was being upgraded.
        if gateway.ended.get(session_id) is StopReason.RESUME_EXPIRED:
            return await refuse(Stop(StopReason.RESUME_EXPIRED))
        return await refuse(Stop(StopReason.RESUME_UNKNOWN, "session ended"))
    digest = session.take_token(resume.token)
    if digest is None:
        return await refuse(Stop(StopReason.RESUME_BAD_TOKEN))
    try:
        released = await session.attach(browser, resume)
    except SessionGone:
        return await refuse(Stop(StopReason.RESUME_UNKNOWN, "session ended"))
    except ProtocolError as exc:
        # Impossible offsets: this socket is refused, the session stays as it was (still
        # attached elsewhere, or detached and resumable with the same token).
        session.restore_token(digest)
        return await refuse(Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc)))
    fields.update(client=browser_request.client_ip, resumes=session.resumes)
    outcomes.labels("resumed").inc()
    log.info("session resumed", extra={"fields": fields})
    if gateway.audit is not None:
        gateway.audit.emit("session_resume", fields | {"user": session.grant.user or "-"})
    return browser, released


async def _authorize(
    gateway: Gateway, browser_request: BrowserRequest, session: Session, fields: dict[str, object]
) -> web.Response | None:
    """Before the upgrade: may this request resume ``session``? None when it may; the
    authorization API's own answer when it refused; raises for everything else."""
    outcomes = gateway.metrics.resumes
    assert gateway.session_authorizer is not None
    limit = gateway.config.limits.handshake_timeout
    try:
        async with asyncio.timeout(limit or None):
            answer = await gateway.session_authorizer.reauthorize(browser_request, session.grant)
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
