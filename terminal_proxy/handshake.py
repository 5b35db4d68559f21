"""One terminal request, top to bottom: dispatch → checks → authorize → dial → upgrade → run.

``dispatch`` matches the route once and runs the cheap request checks (``routes.py``);
``_open`` holds the limits, asks the authorization, takes the user's slot, dials the
upstream and upgrades the browser, returning one ``Opened`` value; ``_run`` relays and
writes the session's end (log line, audit event, metrics). Until the upgrade, every
failure is an HTTP response whose body names the cause and carries the request id that
the log line also carries (``errors.py``); a resume (``?resume=``) goes to ``resume.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass

from aiohttp import WSCloseCode, web

from .authorization import BrowserRequest, Grant, PassBack
from .config import Config, IPNetwork
from .errors import (
    AuthorizationError,
    BadRequestTarget,
    GatewayError,
    LimitReached,
    MethodNotAllowed,
    NoCommonSubprotocol,
    PathRejected,
    UpgradeNotAllowed,
    UpstreamError,
)
from .gateway import FORWARDED_BY, GATEWAY, Gateway, Services
from .join import join_session, resume_participant, take_part
from .metrics import dial_failure_reason
from .observability import ended_fields, opened_fields
from .protocols import BROWSER_SUBPROTOCOLS, TERMINAL_PROXY, Role, codec_for, negotiate
from .ratelimit import client_key
from .registry import Slot
from .requestpath import check_request_path
from .resume import resume_session
from .routes import (
    check_header_values,
    check_host,
    check_origin,
    check_upgrade_headers,
    match_route,
    offered,
    request_scheme,
    snapshot,
    wants_upgrade,
)
from .session.recording import start_recording, wants_recording
from .session.relay import Session
from .session.sockets import set_pong_timeout, unwatch
from .tasks import spawn

__all__ = ["BrowserSocket", "browser_socket", "dispatch", "new_request_id"]

log = logging.getLogger("terminal_proxy.gateway")
session_log = logging.getLogger("terminal_proxy.session")

# The replica prefix of a session id (config.parse_replica_id's alphabet).
_REPLICA_TAG = re.compile(r"[a-z0-9-]{1,63}")


class BrowserSocket(web.WebSocketResponse):
    """aiohttp closes oversized messages with 1009 and no reason; we add one.

    The limit is read from aiohttp's own ``_max_msg_size`` rather than kept in an
    attribute of ours: an attribute set after ``__init__`` un-shares the instance's
    ``__dict__`` keys, ~650 bytes more per session (docs/performance.md).
    """

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message:
            limit = getattr(self, "_max_msg_size", "?")
            message = f"message too big (limit {limit} bytes)".encode()
        return await super().close(code=code, message=message, drain=drain)

    def _set_closing(self, code: WSCloseCode) -> None:
        super()._set_closing(code)
        unwatch(self._req and self._req.protocol)

    def _set_closed(self) -> None:
        super()._set_closed()
        unwatch(self._req and self._req.protocol)


@dataclass(frozen=True, slots=True)
class Opened:
    """A handshake that succeeded: the upgraded browser, its session, the user's slot and
    the session's fields (for its log lines and audit events)."""

    browser: BrowserSocket
    session: Session
    slot: Slot
    fields: dict[str, object]


def new_request_id(replica_id: str = "") -> str:
    """A request id, which becomes the session id: 64 random bits in hex, after
    ``<replica_id>.`` when ``session.replica_id`` is set (a load balancer routes a
    ``?resume=<id>`` on that prefix to the replica holding the session)."""
    token = secrets.token_hex(8)
    return f"{replica_id}.{token}" if replica_id else token


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Every request that no other route took: a terminal route, or 404/400."""
    gateway = request.app[GATEWAY]
    request_id = new_request_id(gateway.config.session.replica_id)
    try:
        if not request.raw_path.startswith("/"):
            # Absolute-form (GET http://host/path) is for proxies; authority-form and
            # asterisk-form are for CONNECT and OPTIONS. None names a terminal here.
            raise BadRequestTarget(
                "request target must be a path (origin-form, as in 'GET /path'); "
                "this is not a forward proxy"
            )
        # Before anything reads the path: it reaches the authorization API as sent.
        check_request_path(request.raw_path)
    except (BadRequestTarget, PathRejected) as exc:
        log.info("request refused: %s", exc.detail, extra={"fields": {"request_id": request_id}})
        return _error_response(exc.status, exc.public, request_id)
    found = match_route(gateway.config.routes, request.path)
    route = None if found is None else found[0].name
    try:
        if found is None:
            if wants_upgrade(request.headers):
                raise UpgradeNotAllowed("websocket upgrade not allowed")
            return web.Response(status=404, text="not found\n")
        response = await _terminal(request, gateway, found[0].name, found[1], request_id)
        if not isinstance(response, web.WebSocketResponse):
            gateway.metrics.handshakes.labels(str(response.status)).inc()
        return response
    except GatewayError as exc:
        if route is not None:
            gateway.metrics.handshakes.labels(str(exc.status)).inc()
        fields: dict[str, object] = {"request_id": request_id, "status": exc.status}
        retry_after = None
        if isinstance(exc, LimitReached):
            gateway.metrics.limited.labels(exc.limit).inc()
            fields["limit"] = exc.limit
            retry_after = exc.retry_after or gateway.config.limits.retry_after
        else:
            fields["path"] = route or "-"
        level = logging.INFO if exc.status < 500 or retry_after is not None else logging.WARNING
        log.log(level, "request refused: %s", exc.detail, extra={"fields": fields})
        return _error_response(exc.status, exc.public, request_id, retry_after=retry_after)


def _error_response(
    status: int, text: str, request_id: str, *, retry_after: float | None = None
) -> web.Response:
    body = f"{text}\nrequest id: {request_id}\n"
    headers = {"Connection": "close", "X-Request-Id": request_id}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    response = web.Response(status=status, text=body, headers=headers)
    # The header alone does not close: aiohttp would keep the connection alive.
    response.force_close()
    return response


async def _terminal(
    request: web.Request,
    gateway: Gateway,
    route: str,
    params: tuple[tuple[str, str], ...],
    request_id: str,
) -> web.StreamResponse:
    config = gateway.config
    if request.method != "GET":
        raise MethodNotAllowed(f"terminal routes take GET WebSocket upgrades, not {request.method}")
    check_upgrade_headers(request.headers)
    chosen = negotiate(offered(request.headers), BROWSER_SUBPROTOCOLS)
    if chosen is None:
        raise NoCommonSubprotocol(
            "no supported WebSocket subprotocol offered; supported: "
            + ", ".join(BROWSER_SUBPROTOCOLS)
        )
    browser = config.browser
    headers = request.headers
    # A request another replica forwarded (cluster/internal.py): that replica is a
    # trusted proxy, its X-Forwarded-For and -Proto carry the browser's.
    forwarded_by = request.get(FORWARDED_BY)
    trusted = browser.trusted_proxies
    if forwarded_by is not None:
        trusted = (*trusted, *_networks_of(request.remote))
    scheme = request_scheme(request.scheme, request.remote or "", headers, trusted)
    host = headers.get("Host", "")
    authority = check_host(host, browser.allowed_hosts, scheme)
    check_origin(headers.get("Origin"), browser.allowed_origins, scheme, authority, host)
    if gateway.draining:
        return _error_response(503, "server shutting down", request_id)
    browser_request = snapshot(
        raw_path=request.raw_path,
        query_string=request.query_string,
        headers=request.headers,
        remote=request.remote or "",
        trusted=trusted,
        route=route,
        params=params,
    )
    check_header_values(request.headers)
    holder = _holder(gateway, request, chosen) if forwarded_by is None else ""
    if holder:
        return await _forward(request, gateway, holder, scheme, browser_request, request_id)
    wait = 0.0
    if gateway.client_rate.enabled:
        client = client_key(browser_request.client_ip)
        wait = gateway.client_rate.take(client)
        if not wait and gateway.shared_rates is not None:
            rate, burst = config.limits.client_handshake_rate, config.limits.client_handshake_burst
            wait = await gateway.shared_rates.take("client", client, rate, burst) or 0.0
    if wait:
        raise LimitReached(
            "client_rate",
            429,
            "too many terminals opened from your address; try again shortly",
            retry_after=wait,
        )
    services = gateway.services()
    limits = config.limits
    registry = gateway.registry
    query = request.query
    # A resume or join of a session living here adds no session.
    resume = query.get("resume") or query.get("join") or "" if chosen == TERMINAL_PROXY else ""
    registry.check_capacity(limits.max_pending_handshakes, limits.max_sessions, resume=resume)
    if chosen == TERMINAL_PROXY and "resume" in request.query:
        # The owner's own socket says participant=owner (its hello names it so): its resume.
        if request.query.get("participant", "owner") != "owner":
            return await _resume_participant(
                request, gateway, services, request_id, browser_request
            )
        return await _resume(request, gateway, services, route, request_id, browser_request)
    if "join" in request.query:
        return await _join(request, gateway, services, route, request_id, browser_request, chosen)
    started = time.monotonic()
    gateway.metrics.handshakes_pending.inc()
    try:
        with registry.handshake():
            async with asyncio.timeout(limits.handshake_timeout or None):
                opened = await _open(
                    request, gateway, services, route, request_id, browser_request, chosen
                )
    except asyncio.CancelledError:
        # The client hung up (aiohttp cancels its handler): the authorization or dial in
        # flight has stopped, and its slots are free.
        log.info(
            "client left before the terminal opened",
            extra={"fields": {"request_id": request_id, "route": route}},
        )
        raise
    except TimeoutError:
        raise LimitReached(
            "handshake_timeout",
            504,
            "opening the terminal took too long (authorization and upstream together "
            "exceeded the gateway's handshake timeout)",
        ) from None
    finally:
        gateway.metrics.handshakes_pending.dec()
    if isinstance(opened, web.StreamResponse):
        return opened
    session, fields = opened.session, opened.fields
    fields["setup_ms"] = round((time.monotonic() - started) * 1000, 1)
    if wants_recording(config.recording, route, session.grant.recording):
        tap = start_recording(
            config.recording,
            session.grant.recording,
            session_id=session.id,
            meta=fields,
            audit=services.audit.emit,
            stop=session.request_stop,
        )
        if tap is not None:
            fields["recording"] = tap.name
            session.recording = tap
    session.audit = services.audit.emit
    session.max_participants = config.limits.max_participants
    session.participants_counted = gateway.metrics.participants.inc
    session_log.info("session opened", extra={"fields": fields})
    services.audit.emit("session_open", fields)
    gateway.metrics.handshakes.labels("101").inc()
    gateway.metrics.sessions_active.inc()
    registry.add(session, opened.slot)
    if session.resume is None:
        await _run(gateway, services, session, fields)
        return opened.browser
    # A resumable session outlives this handler: aiohttp cancels the handler when the
    # browser's connection drops, and the session must carry on detached.
    task = spawn(_run(gateway, services, session, fields), name=f"session-{session.id}")
    gateway.session_tasks.add(task)
    task.add_done_callback(gateway.session_tasks.discard)
    await asyncio.shield(task)
    return opened.browser


async def _resume(
    request: web.Request,
    gateway: Gateway,
    services: Services,
    route: str,
    request_id: str,
    browser_request: BrowserRequest,
) -> web.StreamResponse:
    """``?resume=``: nothing is dialled (resume.py). The resume holds a pending-handshake
    slot until it is attached or refused, then this handler waits for the session to let
    its socket go (the session, not this handler, closes it)."""
    config = gateway.config
    _note_misrouted_resume(config.session.replica_id, request.query["resume"], request_id)
    socket = browser_socket(config, TERMINAL_PROXY)
    gateway.metrics.handshakes_pending.inc()
    try:
        with gateway.registry.handshake(resume=True):
            response, released = await resume_session(
                request, gateway, services, route, request_id, browser_request, socket
            )
    finally:
        gateway.metrics.handshakes_pending.dec()
    if released is not None:
        await asyncio.shield(released)
    return response


def _holder(gateway: Gateway, request: web.Request, chosen: str) -> str:
    """The replica holding the session a resume (or join) names, when forwarding is on
    and it is another replica; else ""."""
    if gateway.forwarder is None or chosen != TERMINAL_PROXY:
        return ""
    session_id = request.query.get("resume") or request.query.get("join") or ""
    tag, dot, rest = session_id.partition(".")
    if not dot or not rest or tag == gateway.config.session.replica_id:
        return ""
    return tag if _REPLICA_TAG.fullmatch(tag) else ""


async def _forward(
    request: web.Request,
    gateway: Gateway,
    holder: str,
    scheme: str,
    browser_request: BrowserRequest,
    request_id: str,
) -> web.StreamResponse:
    """Pass the request to the replica holding its session (cluster/forward.py). It
    holds a pending-handshake slot here until the holder has answered; it adds no
    session here (the holder counts it)."""
    config = gateway.config
    assert gateway.forwarder is not None
    gateway.registry.check_capacity(config.limits.max_pending_handshakes, 0)
    return await gateway.forwarder.forward(
        request,
        replica=holder,
        scheme=scheme,
        forwarded_for=browser_request.forwarded_for,
        offered=offered(request.headers),
        make_socket=lambda chosen: browser_socket(config, chosen or TERMINAL_PROXY),
        pending=gateway.registry.handshake(resume=True),
        request_id=request_id,
    )


def _networks_of(remote: str | None) -> tuple[IPNetwork, ...]:
    try:
        return (ipaddress.ip_network(remote or ""),)
    except ValueError:
        return ()


async def _resume_participant(
    request: web.Request,
    gateway: Gateway,
    services: Services,
    request_id: str,
    browser_request: BrowserRequest,
) -> web.StreamResponse:
    """``?resume=…&participant=…``: a participant's new socket (join.py)."""
    socket = browser_socket(gateway.config, TERMINAL_PROXY)
    with gateway.registry.handshake(resume=True):
        resumed = await resume_participant(
            request, gateway, services, request_id, browser_request, socket
        )
    if isinstance(resumed, web.StreamResponse):
        return resumed
    await resumed()
    return socket


async def _join(
    request: web.Request,
    gateway: Gateway,
    services: Services,
    route: str,
    request_id: str,
    browser_request: BrowserRequest,
    chosen: str,
) -> web.StreamResponse:
    """``?join=``: a participant of someone else's shared session (join.py). It holds a
    pending-handshake slot until upgraded or refused; it adds no session."""
    if chosen != TERMINAL_PROXY:
        raise NoCommonSubprotocol(f"joining needs the {TERMINAL_PROXY} subprotocol")
    socket = browser_socket(gateway.config, TERMINAL_PROXY)
    gateway.metrics.handshakes_pending.inc()
    try:
        with gateway.registry.handshake(resume=True):
            joined = await join_session(
                request, gateway, services, route, request_id, browser_request, socket
            )
    finally:
        gateway.metrics.handshakes_pending.dec()
    if isinstance(joined, web.StreamResponse):
        return joined
    await take_part(joined)
    return socket


async def _open(
    request: web.Request,
    gateway: Gateway,
    services: Services,
    route: str,
    request_id: str,
    browser_request: BrowserRequest,
    chosen: str,
) -> web.StreamResponse | Opened:
    """Authorize, take the user's slot, dial, upgrade: a refusal or an opened session."""
    config = gateway.config
    metrics = gateway.metrics
    auth_started = time.monotonic()
    try:
        answer = await services.authorizer.authorize(browser_request)
    except AuthorizationError as exc:
        metrics.authorization_seconds.observe(time.monotonic() - auth_started)
        metrics.authorization_failed(exc)
        raise
    metrics.authorization_seconds.observe(time.monotonic() - auth_started)
    if isinstance(answer, PassBack):
        metrics.authorizations.labels("refused").inc()
        log.info(
            "authorization refused",
            extra={"fields": {"request_id": request_id, "status": answer.status, "route": route}},
        )
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    metrics.authorizations.labels("granted").inc()

    key = user_key(answer, browser_request)
    wait = gateway.user_rate.take(key)
    if not wait and gateway.shared_rates is not None and gateway.user_rate.enabled:
        rate, burst = config.limits.user_handshake_rate, config.limits.user_handshake_burst
        wait = await gateway.shared_rates.take("user", key, rate, burst) or 0.0
    if wait:
        raise LimitReached(
            "user_rate",
            429,
            "you are opening terminals too fast; try again shortly",
            retry_after=wait,
        )
    slot = await gateway.registry.admit(
        key,
        config.limits.max_sessions_per_user,
        config.session.close_timeout,
        session_id=request_id,
        route=route,
        max_sessions=config.limits.max_sessions,
    )
    with slot:
        dial_started = time.monotonic()
        try:
            upstream = await services.dialer.dial(
                answer.details, forwarded_for=browser_request.forwarded_for
            )
        except UpstreamError as exc:
            metrics.dial_failures.labels(dial_failure_reason(exc)).inc()
            raise
        finally:
            metrics.dial_seconds.observe(time.monotonic() - dial_started)
        browser = browser_socket(config, chosen)
        try:
            await browser.prepare(request)
        except BaseException:
            await upstream.ws.close(code=1000)
            raise
    session = Session(
        session_id=request_id,
        browser=browser,
        browser_codec=codec_for(chosen, Role.SERVER),
        upstream=upstream.ws,
        upstream_codec=upstream.codec,
        authorizer=services.session_authorizer,
        request=browser_request,
        grant=answer,
        limits=config.session,
        polling=config.authorization,
        shutdown=gateway.shutdown,
        replay_budget=gateway.replay_budget,
    )
    fields = opened_fields(request_id, route, browser_request, answer, chosen, upstream.subprotocol)
    return Opened(browser, session, slot, fields)


async def _run(
    gateway: Gateway, services: Services, session: Session, fields: dict[str, object]
) -> None:
    """Run one session; then the bookkeeping of its end (log line, audit, metrics)."""
    try:
        await session.run()
    finally:
        gateway.registry.remove(session)
        gateway.metrics.sessions_active.dec()
        summary = session.summary()
        gateway.metrics.session_ended(
            summary.stop.reason, summary.bytes_in, summary.bytes_out, summary.duration_s
        )
        end = fields | ended_fields(summary)
        session_log.info("session ended", extra={"fields": end})
        services.audit.emit("session_end", end)


def _note_misrouted_resume(replica_id: str, session_id: str, request_id: str) -> None:
    """Warn when a resume names another replica's session: it will get 4008 here, and
    the load balancer in front is not routing resumes by session id."""
    tag, dot, _ = session_id.partition(".")
    if not replica_id or not dot or tag == replica_id or not _REPLICA_TAG.fullmatch(tag):
        return
    log.warning(
        "resume of a session of replica %s reached replica %s: route ?resume= by the "
        "session id's replica (docs/operations.md, several replicas)",
        tag,
        replica_id,
        extra={"fields": {"request_id": request_id, "session": session_id}},
    )


def browser_socket(config: Config, chosen: str) -> BrowserSocket:
    browser = BrowserSocket(
        protocols=(chosen,),
        heartbeat=config.browser.ping_interval or None,
        max_msg_size=config.browser.max_message_size,
        # Bytes queued towards a slow browser before the upstream pump waits for it.
        writer_limit=config.session.max_buffer,
        timeout=config.session.close_timeout,
        compress=False,
        autoping=True,
        autoclose=True,
    )
    if config.browser.pong_timeout and config.browser.ping_interval:
        set_pong_timeout(browser, config.browser.pong_timeout)
    return browser


def user_key(grant: Grant, request: BrowserRequest) -> str:
    """Who the per-user limit counts: the user the authorization named, else the client."""
    return f"user:{grant.user}" if grant.user else f"client:{request.client_ip}"
