"""Resuming a detached ``v1.terminal-proxy`` session on a new browser socket.

The browser opens the same terminal route with ``?resume=<session id>`` (the id is not a
secret; it lets a load balancer route by session). Nothing is dialled: the socket is
upgraded, its first message must be ``resume`` (session id, single-use token, output
offset received, input offset sent), the token is checked against the stored SHA-256,
the authorization API must still grant this request the session's own grant (same user,
same terminal), and the session then replays what the browser missed on this socket.
Every refusal is a close code of ``docs/close-codes.md``; see docs/browser-protocol.md.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from .authorization import BrowserRequest, PassBack
from .errors import AuthorizationError
from .gateway import Gateway, Services
from .protocols import Opcode, ProtocolError, Resume, Role, codec_for
from .session.links import SessionGone
from .session.sockets import close_socket
from .session.stop import Stop, StopReason

__all__ = ["FIRST_MESSAGE_TIMEOUT", "resume_session"]

log = logging.getLogger("terminal_proxy.session")

# How long the first message may take when limits.handshake_timeout is off.
FIRST_MESSAGE_TIMEOUT = 30.0


async def resume_session(
    request: web.Request,
    gateway: Gateway,
    services: Services,
    route: str,
    request_id: str,
    browser_request: BrowserRequest,
    browser: web.WebSocketResponse,
) -> web.WebSocketResponse:
    """Upgrade, read the resume message, check it, attach; return when this socket is done."""
    session_id = request.query.get("resume", "")
    config = gateway.config
    close_timeout = config.session.close_timeout
    fields: dict[str, object] = {"request_id": request_id, "route": route, "session": session_id}
    await browser.prepare(request)
    gateway.metrics.handshakes.labels("101").inc()

    async def refuse(stop: Stop) -> web.WebSocketResponse:
        gateway.metrics.resumes.labels(stop.reason.value).inc()
        log.info(
            "resume refused",
            extra={"fields": fields | {"stop": stop.reason.value, "detail": stop.detail}},
        )
        await close_socket(browser, stop, close_timeout)
        return browser

    try:
        resume = await _first_message(browser, config.limits.handshake_timeout)
    except ProtocolError as exc:
        return await refuse(Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc)))
    if resume is None:
        gateway.metrics.resumes.labels("browser_left").inc()
        return browser  # the browser left before saying anything
    if resume.session != session_id:
        return await refuse(
            Stop(StopReason.BROWSER_PROTOCOL_ERROR, "resume: session differs from the URL's")
        )
    registry = gateway.registry
    session = registry.resumable.get(session_id)
    link = None if session is None else session.resume
    if session is None or link is None:
        if registry.ended.get(session_id) is StopReason.RESUME_EXPIRED:
            return await refuse(Stop(StopReason.RESUME_EXPIRED))
        return await refuse(Stop(StopReason.RESUME_UNKNOWN))
    digest = link.take_token(resume.token)
    if digest is None:
        return await refuse(Stop(StopReason.RESUME_BAD_TOKEN))
    try:
        answer = await services.session_authorizer.reauthorize(browser_request, session.grant)
    except AuthorizationError as exc:
        link.restore_token(digest)
        return await refuse(Stop(StopReason.AUTH_UNAVAILABLE, exc.public))
    if isinstance(answer, PassBack) or answer != session.grant:
        # A refused resume does not use the token up: only a successful one does.
        link.restore_token(digest)
        if isinstance(answer, PassBack) and answer.status >= 500:
            return await refuse(Stop(StopReason.AUTH_UNAVAILABLE, f"status {answer.status}"))
        if isinstance(answer, PassBack):
            detail = f"authorization answered {answer.status}"
        else:
            detail = "authorization names another user or terminal"
        return await refuse(Stop(StopReason.RESUME_FORBIDDEN, detail))
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
    fields.update(client=browser_request.client_ip, resumes=link.resumes)
    gateway.metrics.resumes.labels("resumed").inc()
    log.info("session resumed", extra={"fields": fields})
    services.audit.emit("session_resume", fields | {"user": session.grant.user or "-"})
    await _wait(released)
    return browser


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


async def _wait(released: asyncio.Future[None]) -> None:
    """Hold this handler until the session lets the socket go (the session, not this
    handler, closes it)."""
    await asyncio.shield(released)
