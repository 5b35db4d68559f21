"""The aiohttp application: terminal routes, the upgrade handler, start-up and drain.

The handler follows one session's data flow: cheap request checks (route, upgrade
headers, subprotocol, Origin) → authorization → allowlist → upstream dial → browser
upgrade → ``Session.run()``. Until the upgrade, every failure is an HTTP response whose
body names the cause and carries the request id that the log line also carries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSCloseCode, web
from yarl import URL

from .audit import AuditLog
from .authorization import Authorizer, BrowserRequest, Grant, PassBack
from .authorization.gitlab import GitLabAuthorizer
from .authorization.http import new_client
from .authorization.native import NativeAuthorizer
from .config import Config
from .errors import (
    AuthorizationError,
    GatewayError,
    MethodNotAllowed,
    NoCommonSubprotocol,
    NotWebSocket,
    OriginRejected,
    UpgradeNotAllowed,
    UpstreamError,
)
from .metrics import CONTENT_TYPE, Metrics, ObservedAuthorizer, dial_failure_reason
from .protocols import BROWSER_SUBPROTOCOLS, TERMINAL_PROXY, Role, codec_for, negotiate
from .recording import Recorder, RecordingSettings
from .replay import ReplayBudget
from .resume import remember_end, resume_session
from .session import Session, SessionLimits, Stop, StopReason
from .tasks import spawn
from .upstream import Dialer

__all__ = ["GATEWAY", "Gateway", "build_app", "drain", "new_request_id"]

log = logging.getLogger("terminal_proxy.gateway")
session_log = logging.getLogger("terminal_proxy.session")

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The replica prefix of a session id (config.parse_replica_id's alphabet).
_REPLICA_TAG = re.compile(r"[a-z0-9-]{1,63}")


@dataclass
class Gateway:
    """Everything the handler shares across sessions."""

    config: Config
    authorizer: Authorizer | None = None
    dialer: Dialer | None = None
    # Live sessions, for shutdown.
    sessions: set[Session] = field(default_factory=set)
    # Set when sessions must close with 1001 (after the drain period).
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    # True from the first shutdown signal: readiness fails, new terminals get 503.
    draining: bool = False
    # Prometheus metrics of this app (its own registry).
    metrics: Metrics = field(default_factory=Metrics)
    # The authorizer sessions re-poll with (counts re-poll outcomes).
    session_authorizer: Authorizer | None = None
    # Audit events (one JSON line per session open and end).
    audit: AuditLog | None = None
    # Handshakes between request and upgrade (resumes: until attached), for
    # limits.max_pending_handshakes; ``resuming`` of them are resumes (no new session).
    pending: int = 0
    resuming: int = 0
    # Sessions (and handshakes past authorization) per user key, for the per-user limit.
    per_user: Counter[str] = field(default_factory=Counter)
    # Where the metrics listener listens ("http://host:port"), once started.
    metrics_url: str | None = None
    # Bind the metrics listener with SO_REUSEPORT (--workers).
    reuse_port: bool = False
    # v1.terminal-proxy sessions that can be resumed, by session id (attached or not).
    resumable: dict[str, Session] = field(default_factory=dict)
    # Recently ended session ids and why (a late resume gets a precise answer).
    ended: OrderedDict[str, StopReason] = field(default_factory=OrderedDict)
    # Memory of every replay buffer (session.resume_memory_cap).
    replay_budget: ReplayBudget = field(default_factory=ReplayBudget)
    # Tasks running resumable sessions (they outlive their first handler).
    session_tasks: set[asyncio.Task[None]] = field(default_factory=set)


GATEWAY = web.AppKey("gateway", Gateway)


class BrowserSocket(web.WebSocketResponse):
    """aiohttp closes oversized messages with 1009 and no reason; we add one."""

    max_message_size = 0

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message:
            message = f"message too big (limit {self.max_message_size} bytes)".encode()
        return await super().close(code=code, message=message, drain=drain)


def build_app(
    config: Config,
    *,
    authorizer: Authorizer | None = None,
    extra_routes: Callable[[web.Application], None] | None = None,
    reuse_port: bool = False,
) -> web.Application:
    """The gateway as an aiohttp app.

    ``authorizer`` replaces the configured HTTP one (the demo's built-in authorizer, tests);
    ``extra_routes`` registers routes that take precedence over the terminal catch-all.
    When ``metrics.listen`` is set, the app runs its metrics listener while it runs;
    ``reuse_port`` binds it with SO_REUSEPORT (several workers on one port).
    """
    app = web.Application(client_max_size=64 * 1024)
    gateway = Gateway(config, authorizer=authorizer, reuse_port=reuse_port)
    app[GATEWAY] = gateway
    gateway.replay_budget.cap = config.session.resume_memory_cap
    gateway.metrics.sessions_detached.set_function(
        lambda: sum(1 for session in gateway.resumable.values() if session.detached)
    )
    if config.recording.routes and config.recording.dir is None:
        raise ValueError("recording.routes is set but recording.dir is not")
    app.router.add_get("/-/health", _health)
    app.router.add_get("/-/readiness", _readiness)
    if extra_routes is not None:
        extra_routes(app)
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    app.cleanup_ctx.append(_clients)
    app.cleanup_ctx.append(_metrics_listener)
    app.on_shutdown.append(drain)
    return app


async def _clients(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    config = gateway.config
    if gateway.authorizer is None and config.authorization.backend is not None:
        client = new_client(config.authorization)
        if config.authorization.contract == "native":
            gateway.authorizer = NativeAuthorizer(config.authorization, client)
        else:
            gateway.authorizer = GitLabAuthorizer(config.authorization, client)
    upstream_config = config.upstream
    if any(route.kind != "authorization" for route in config.routes):
        # kubernetes_asyncio costs ~0.3 s and tens of MB to import: only when used.
        from .authorization.routing import with_kubernetes

        # Kubernetes routes: the clusters' API hosts join the upstream allowlist.
        gateway.authorizer, upstream_config = await with_kubernetes(config, gateway.authorizer)
    if gateway.authorizer is None:
        raise ValueError("authorization.backend is not set")
    gateway.session_authorizer = ObservedAuthorizer(gateway.authorizer, gateway.metrics)
    gateway.audit = AuditLog(config.audit)
    gateway.audit.open()
    gateway.dialer = Dialer(upstream_config, close_timeout=config.session.close_timeout)
    await gateway.dialer.start()
    if config.upstream.insecure_skip_tls_verify:
        log.warning("upstream.insecure_skip_tls_verify is on: upstream TLS is NOT verified")
    try:
        yield
    finally:
        gateway.audit.close()
        await gateway.dialer.aclose()
        await gateway.authorizer.aclose()


async def _metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """``metrics.listen``: /metrics, /-/health and /-/readiness on their own port.

    It outlives the main listener during the drain (cleanup runs after on_shutdown), so
    probes and scrapes see ``draining`` until the process exits.
    """
    gateway = app[GATEWAY]
    address = gateway.config.metrics.listen
    if address is None:
        yield
        return
    metrics_app = web.Application()
    metrics_app[GATEWAY] = gateway
    metrics_app.router.add_get("/metrics", _metrics)
    metrics_app.router.add_get("/-/health", _health)
    metrics_app.router.add_get("/-/readiness", _readiness)
    runner = web.AppRunner(metrics_app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, address.host, address.port, reuse_port=gateway.reuse_port or None
        )
        await site.start()
        host, port = runner.addresses[0][:2]
        gateway.metrics_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("metrics listening on %s/metrics", gateway.metrics_url)
        yield
    finally:
        await runner.cleanup()


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def drain(app: web.Application) -> None:
    """Shutdown: fail readiness, let sessions run for the drain period, then close them.

    ``serve`` calls it after closing the listener and before ``AppRunner.cleanup()``:
    cleanup's ``pre_shutdown`` makes aiohttp drop data arriving on every open connection,
    upgraded WebSockets included, so sessions draining inside ``on_shutdown`` (where this
    also runs, for apps stopped without ``serve``; a second call finds nothing to drain)
    would no longer hear their browsers.
    """
    gateway = app[GATEWAY]
    gateway.draining = True
    gateway.metrics.draining.set(1)
    grace = gateway.config.session.shutdown_grace
    pending = [s.done for s in gateway.sessions]
    if pending and grace > 0:
        log.info("draining %d sessions for up to %gs", len(pending), grace)
        await asyncio.wait(pending, timeout=grace)
    gateway.shutdown.set()
    for session in list(gateway.sessions):
        session.shut_down()
    pending = [s.done for s in gateway.sessions]
    if pending:
        log.info("closing %d sessions: server shutting down", len(pending))
        await asyncio.wait(pending, timeout=gateway.config.session.close_timeout + 1)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readiness(request: web.Request) -> web.Response:
    if request.app[GATEWAY].draining:
        return web.Response(status=503, text="draining\n")
    return web.Response(text="ready\n")


# The handler ------------------------------------------------------------------------


def new_request_id(replica_id: str = "") -> str:
    """A request id, which becomes the session id: 64 random bits in hex, after
    ``<replica_id>.`` when ``session.replica_id`` is set (a load balancer routes a
    ``?resume=<id>`` on that prefix to the replica holding the session)."""
    token = secrets.token_hex(8)
    return f"{replica_id}.{token}" if replica_id else token


async def _dispatch(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    request_id = new_request_id(gateway.config.session.replica_id)
    route = _match_route(gateway, request.path)
    try:
        if route is None:
            if _wants_upgrade(request):
                raise UpgradeNotAllowed("websocket upgrade not allowed")
            return web.Response(status=404, text="not found\n")
        response = await _terminal(request, gateway, route, request_id)
        if not isinstance(response, web.WebSocketResponse):
            gateway.metrics.handshakes.labels(str(response.status)).inc()
        return response
    except GatewayError as exc:
        if route is not None:
            gateway.metrics.handshakes.labels(str(exc.status)).inc()
        level = logging.INFO if exc.status < 500 else logging.WARNING
        log.log(
            level,
            "request refused: %s",
            exc.detail,
            extra={
                "fields": {"request_id": request_id, "status": exc.status, "path": route or "-"}
            },
        )
        return _error_response(exc.status, exc.public, request_id)


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


def _error_response(
    status: int, text: str, request_id: str, *, retry_after: float | None = None
) -> web.Response:
    body = f"{text}\nrequest id: {request_id}\n"
    headers = {"Connection": "close", "X-Request-Id": request_id}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return web.Response(status=status, text=body, headers=headers)


def _limited(gateway: Gateway, limit: str, status: int, text: str, request_id: str) -> web.Response:
    """A refusal by one of the limits: 503/429 with Retry-After, before any upgrade."""
    gateway.metrics.limited.labels(limit).inc()
    log.info(
        "request refused: %s",
        text,
        extra={"fields": {"request_id": request_id, "status": status, "limit": limit}},
    )
    return _error_response(status, text, request_id, retry_after=gateway.config.limits.retry_after)


async def _terminal(
    request: web.Request, gateway: Gateway, route: str, request_id: str
) -> web.StreamResponse:
    config = gateway.config
    if request.method != "GET":
        raise MethodNotAllowed(f"terminal routes take GET WebSocket upgrades, not {request.method}")
    _check_upgrade_headers(request)
    chosen = negotiate(_offered(request), BROWSER_SUBPROTOCOLS)
    if chosen is None:
        raise NoCommonSubprotocol(
            "no supported WebSocket subprotocol offered; supported: "
            + ", ".join(BROWSER_SUBPROTOCOLS)
        )
    _check_origin(request, config.browser.allowed_origins)
    if gateway.draining:
        return _error_response(503, "server shutting down", request_id)
    resuming = chosen == TERMINAL_PROXY and "resume" in request.query
    limits = config.limits
    if limits.max_pending_handshakes and gateway.pending >= limits.max_pending_handshakes:
        return _limited(
            gateway,
            "pending",
            503,
            "too many terminals are being opened at once; try again shortly",
            request_id,
        )
    # A resume of a session living here adds no session; any other request does.
    adds_session = not (resuming and request.query["resume"] in gateway.resumable)
    opening = gateway.pending - gateway.resuming
    if (
        limits.max_sessions
        and adds_session
        and len(gateway.sessions) + opening >= limits.max_sessions
    ):
        return _limited(
            gateway,
            "sessions",
            503,
            "the gateway is at its limit of open terminals; try again later",
            request_id,
        )
    if resuming:
        return await _resume(request, gateway, route, request_id, chosen)

    browser_request = _snapshot(request, config.browser.trusted_proxies)
    started = time.monotonic()
    gateway.pending += 1
    gateway.metrics.handshakes_pending.inc()
    try:
        async with asyncio.timeout(limits.handshake_timeout or None):
            opened = await _handshake(request, gateway, route, request_id, browser_request, chosen)
    except asyncio.CancelledError:
        # The client hung up (aiohttp cancels its handler): the authorization or dial in
        # flight has stopped; the finally below frees the slot.
        log.info(
            "client left before the terminal opened",
            extra={"fields": {"request_id": request_id, "route": route}},
        )
        raise
    except TimeoutError:
        return _limited(
            gateway,
            "handshake_timeout",
            504,
            "opening the terminal took too long (authorization and upstream together "
            "exceeded the gateway's handshake timeout)",
            request_id,
        )
    finally:
        gateway.pending -= 1
        gateway.metrics.handshakes_pending.dec()
    if isinstance(opened, web.StreamResponse):
        return opened
    # From here the per-user slot is held until the session ends.
    user_key, (browser, session, fields) = opened

    fields["setup_ms"] = round((time.monotonic() - started) * 1000, 1)
    wanted = session.grant.recording
    if wanted.enabled if wanted is not None else route in config.recording.routes:
        _start_recording(gateway, session, fields)
    session_log.info("session opened", extra={"fields": fields})
    assert gateway.audit is not None
    gateway.audit.emit("session_open", fields)
    gateway.metrics.handshakes.labels("101").inc()
    gateway.metrics.sessions_active.inc()
    gateway.sessions.add(session)
    if not session.resumable:
        await _run_session(gateway, session, user_key, fields)
        return browser
    # A resumable session outlives this handler: aiohttp cancels the handler when the
    # browser's connection drops, and the session must carry on detached.
    gateway.resumable[session.id] = session
    task = spawn(_run_session(gateway, session, user_key, fields), name=f"session-{session.id}")
    gateway.session_tasks.add(task)
    task.add_done_callback(gateway.session_tasks.discard)
    await asyncio.shield(task)
    return browser


async def _resume(
    request: web.Request, gateway: Gateway, route: str, request_id: str, chosen: str
) -> web.StreamResponse:
    """``?resume=``: nothing is dialled (terminal_proxy/resume.py). The resume holds a
    pending-handshake slot until it is attached or refused, then this handler waits for
    the session to let its socket go (the session, not this handler, closes it)."""
    config = gateway.config
    _note_misrouted_resume(config.session.replica_id, request.query["resume"], request_id)
    socket = _browser_socket(config, chosen)
    browser_request = _snapshot(request, config.browser.trusted_proxies)
    gateway.pending += 1
    gateway.resuming += 1
    gateway.metrics.handshakes_pending.inc()
    try:
        response, released = await resume_session(
            request, gateway, route, request_id, browser_request, socket
        )
    finally:
        gateway.pending -= 1
        gateway.resuming -= 1
        gateway.metrics.handshakes_pending.dec()
    if released is not None:
        await asyncio.shield(released)
    return response


async def _run_session(
    gateway: Gateway, session: Session, user_key: str, fields: dict[str, object]
) -> None:
    """Run one session; then the bookkeeping of its end (log line, audit, metrics)."""
    assert gateway.audit is not None
    try:
        await session.run()
    finally:
        gateway.sessions.discard(session)
        if gateway.resumable.pop(session.id, None) is not None and session.stop is not None:
            remember_end(gateway.ended, session.id, session.stop.reason)
        _release_user(gateway, user_key)
        gateway.metrics.sessions_active.dec()
        stop = session.stop or Stop(StopReason.INTERNAL, "session did not record a stop")
        end = fields | _end_fields(session, stop)
        gateway.metrics.session_ended(
            stop.reason, session.bytes_in, session.bytes_out, time.monotonic() - session.started
        )
        session_log.info("session ended", extra={"fields": end})
        gateway.audit.emit("session_end", end)


_Opened = tuple[str, tuple[web.WebSocketResponse, Session, dict[str, object]]]


async def _handshake(
    request: web.Request,
    gateway: Gateway,
    route: str,
    request_id: str,
    browser_request: BrowserRequest,
    chosen: str,
) -> web.StreamResponse | _Opened:
    """Authorize, apply the per-user limit, dial, upgrade: a refusal or an opened session.

    On success the per-user slot returned with the session is held; the caller releases it.
    """
    config = gateway.config
    metrics = gateway.metrics
    assert gateway.authorizer is not None and gateway.dialer is not None
    assert gateway.session_authorizer is not None
    auth_started = time.monotonic()
    try:
        answer = await gateway.authorizer.authorize(browser_request)
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

    user_key = _user_key(answer, browser_request)
    per_user = config.limits.max_sessions_per_user
    if per_user and gateway.per_user[user_key] >= per_user:
        await _end_oldest_detached(gateway, user_key)
    if per_user and gateway.per_user[user_key] >= per_user:
        return _limited(
            gateway,
            "per_user",
            429,
            f"you have too many terminals open (limit {per_user}); close one and try again",
            request_id,
        )
    gateway.per_user[user_key] += 1
    try:
        dial_started = time.monotonic()
        try:
            gateway.dialer.check_allowed(answer.details)
            upstream = await gateway.dialer.dial(
                answer.details, forwarded_for=browser_request.forwarded_for
            )
        except UpstreamError as exc:
            metrics.dial_failures.labels(dial_failure_reason(exc)).inc()
            raise
        finally:
            metrics.dial_seconds.observe(time.monotonic() - dial_started)

        browser = _browser_socket(config, chosen)
        try:
            await browser.prepare(request)
        except BaseException:
            await upstream.ws.close(code=1000)
            raise
    except BaseException:
        _release_user(gateway, user_key)
        raise
    session = Session(
        session_id=request_id,
        browser=browser,
        browser_codec=codec_for(chosen, Role.SERVER),
        upstream=upstream.ws,
        upstream_codec=upstream.codec,
        authorizer=gateway.session_authorizer,
        request=browser_request,
        grant=answer,
        limits=_limits(config),
        shutdown=gateway.shutdown,
        replay_budget=gateway.replay_budget,
    )
    fields = _session_fields(route, browser_request, answer, chosen, upstream.subprotocol)
    fields["session"] = request_id
    return user_key, (browser, session, fields)


def _start_recording(gateway: Gateway, session: Session, fields: dict[str, object]) -> None:
    """Start the session's recording (docs/recording.md); apply the policy on failure."""
    config = gateway.config.recording
    wanted = session.grant.recording
    assert gateway.audit is not None
    required = config.policy == "required"
    record_input = config.input
    if wanted is not None:
        required = required if wanted.required is None else wanted.required
        record_input = record_input if wanted.input is None else wanted.input
    try:
        if config.dir is None:
            raise FileNotFoundError(0, "recording.dir is not set")
        settings = RecordingSettings(
            Path(config.dir),
            max_size=config.max_size,
            spool_quota=config.spool_quota,
            required=required,
            record_input=record_input,
        )
        recorder = Recorder.start(settings, session.id, dict(fields))
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc.strerror or exc}"
        log.warning("session %s: recording could not start: %s", session.id, error)
        if required:
            session.request_stop(Stop(StopReason.RECORDING_FAILED, error))
        else:
            gateway.audit.emit("recording_failed", {"session": session.id, "error": error})
        return
    fields["recording"] = recorder.path.name
    session.start_recording(recorder, gateway.audit.emit)


def _browser_socket(config: Config, chosen: str) -> BrowserSocket:
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
    browser.max_message_size = config.browser.max_message_size
    if config.browser.pong_timeout and config.browser.ping_interval:
        browser._pong_heartbeat = config.browser.pong_timeout
    return browser


async def _end_oldest_detached(gateway: Gateway, user_key: str) -> None:
    """At the per-user limit, a session of that user whose browser has gone (detached,
    waiting for a resume) makes room: the oldest one ends (4007 to a later resume)."""
    detached = [
        s
        for s in gateway.resumable.values()
        if s.detached and _user_key(s.grant, s.request) == user_key
    ]
    if not detached:
        return
    oldest = min(detached, key=lambda s: s.started)
    oldest.request_stop(
        Stop(StopReason.RESUME_EXPIRED, "replaced by a new session of the same user")
    )
    await asyncio.wait([oldest.done], timeout=gateway.config.session.close_timeout + 1)


def _user_key(grant: Grant, request: BrowserRequest) -> str:
    """Who the per-user limit counts: the user the authorization named, else the client."""
    return f"user:{grant.user}" if grant.user else f"client:{request.client_ip}"


def _release_user(gateway: Gateway, user_key: str) -> None:
    gateway.per_user[user_key] -= 1
    if gateway.per_user[user_key] <= 0:
        del gateway.per_user[user_key]


def _limits(config: Config) -> SessionLimits:
    return SessionLimits(
        max_duration=config.session.max_duration,
        idle_timeout=config.session.idle_timeout,
        poll_interval=config.authorization.poll_interval,
        poll_jitter=config.authorization.poll_jitter,
        poll_failure_grace=config.authorization.poll_failure_grace,
        close_timeout=config.session.close_timeout,
        resume_grace=config.session.resume_grace,
        resume_buffer=config.session.resume_buffer,
        expiry_warning=config.session.expiry_warning,
        extension=config.session.extension,
        max_extensions=config.session.max_extensions,
    )


def _session_fields(
    route: str, request: BrowserRequest, grant: Grant, browser_proto: str, upstream_proto: str
) -> dict[str, object]:
    target = grant.details.target
    fields: dict[str, object] = {
        "route": route,
        "client": request.client_ip,
        "user": grant.user or "-",
        "upstream": f"{target.host}:{target.port}",
    }
    if target.pod is not None:
        fields.update(
            verb=target.verb,
            namespace=target.namespace,
            pod=target.pod,
            container=target.container or "-",
        )
    fields.update(browser_protocol=browser_proto, upstream_protocol=upstream_proto or "-")
    return fields


def _end_fields(session: Session, stop: Stop) -> dict[str, object]:
    return {
        "stop": stop.reason.value,
        "detail": stop.detail,
        "exit_code": "-" if stop.exit_code is None else stop.exit_code,
        "browser_close": session.browser.close_code or stop.browser_code,
        "upstream_close": session.upstream.close_code,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
        "duration_s": round(time.monotonic() - session.started, 3),
    }


# Request checks -----------------------------------------------------------------------


def _match_route(gateway: Gateway, path: str) -> str | None:
    for route in gateway.config.routes:
        if route.pattern.search(path):
            return route.name
    return None


def _tokens(request: web.Request, name: str) -> set[str]:
    return {
        token.strip().lower()
        for value in request.headers.getall(name, ())
        for token in value.split(",")
    }


def _wants_upgrade(request: web.Request) -> bool:
    return "websocket" in _tokens(request, "Upgrade") or "upgrade" in _tokens(request, "Connection")


def _check_upgrade_headers(request: web.Request) -> None:
    missing = []
    if "upgrade" not in _tokens(request, "Connection"):
        missing.append("Connection: upgrade")
    if "websocket" not in _tokens(request, "Upgrade"):
        missing.append("Upgrade: websocket")
    if missing:
        raise NotWebSocket(
            "this is a terminal WebSocket endpoint, but the request is missing "
            + " and ".join(f"'{m}'" for m in missing)
            + ". If a reverse proxy (nginx, HAProxy, an ingress) is in front of terminal-proxy, "
            "it may be stripping these headers: it must pass on Connection and Upgrade."
        )
    if request.headers.get("Sec-WebSocket-Version", "") != "13":
        raise NotWebSocket("unsupported WebSocket version: Sec-WebSocket-Version must be 13")
    if not request.headers.get("Sec-WebSocket-Key"):
        raise NotWebSocket("Sec-WebSocket-Key header is missing")


def _offered(request: web.Request) -> list[str]:
    return [
        token.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", ())
        for token in value.split(",")
        if token.strip()
    ]


def _check_origin(request: web.Request, allowed: Sequence[str]) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser (kubectl, scripts): nothing to forge
    try:
        url = URL(origin)
    except ValueError as exc:
        raise OriginRejected("origin not allowed", detail=f"unparseable Origin {origin!r}") from exc
    if url.host is not None:
        origin_host = url.host.lower()
        port = url.explicit_port
        netloc = origin_host if port is None else f"{origin_host}:{port}"
        if netloc == request.host.lower():
            return
        normalized = f"{url.scheme}://{netloc}"
        if "*" in allowed or normalized in {a.rstrip("/").lower() for a in allowed}:
            return
    raise OriginRejected(
        "origin not allowed: the page opening this terminal is not same-origin and not on "
        "browser.allowed_origins",
        detail=f"Origin {origin!r} is not {request.host!r} and not allowed",
    )


def _snapshot(request: web.Request, trusted: Sequence[_IPNetwork]) -> BrowserRequest:
    remote = request.remote or ""
    prior = [
        part.strip()
        for value in request.headers.getall("X-Forwarded-For", ())
        for part in value.split(",")
        if part.strip()
    ]
    if prior and _is_trusted(remote, trusted):
        forwarded_for = ", ".join([*prior, remote])
        client_ip = next((ip for ip in reversed(prior) if not _is_trusted(ip, trusted)), prior[0])
    else:
        forwarded_for = remote
        client_ip = remote
    raw = tuple((k, v) for k, v in request.headers.items())
    return BrowserRequest(
        path=request.raw_path.split("?", 1)[0],
        query_string=request.query_string,
        headers=raw,
        client_ip=client_ip,
        forwarded_for=forwarded_for,
        peer=remote,
    )


def _is_trusted(address: str, trusted: Sequence[_IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
