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
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, web
from yarl import URL

from .authorization import Authorizer, BrowserRequest, Grant, PassBack
from .authorization.gitlab import GitLabAuthorizer
from .authorization.http import new_client
from .authorization.native import NativeAuthorizer
from .config import Config
from .errors import (
    GatewayError,
    MethodNotAllowed,
    NoCommonSubprotocol,
    NotWebSocket,
    OriginRejected,
    UpgradeNotAllowed,
)
from .protocols import BROWSER_SUBPROTOCOLS, Role, codec_for, negotiate
from .session import Session, SessionLimits, Stop, StopReason
from .upstream import Dialer

__all__ = ["GATEWAY", "Gateway", "build_app"]

log = logging.getLogger("terminal_proxy.gateway")
session_log = logging.getLogger("terminal_proxy.session")

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
) -> web.Application:
    """The gateway as an aiohttp app.

    ``authorizer`` replaces the configured HTTP one (the demo's built-in authorizer, tests);
    ``extra_routes`` registers routes that take precedence over the terminal catch-all.
    """
    app = web.Application(client_max_size=64 * 1024)
    gateway = Gateway(config, authorizer=authorizer)
    app[GATEWAY] = gateway
    app.router.add_get("/-/health", _health)
    app.router.add_get("/-/readiness", _readiness)
    if extra_routes is not None:
        extra_routes(app)
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    app.cleanup_ctx.append(_clients)
    app.on_shutdown.append(_drain)
    return app


async def _clients(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    config = gateway.config
    if gateway.authorizer is None:
        client = new_client(config.authorization)
        if config.authorization.contract == "native":
            gateway.authorizer = NativeAuthorizer(config.authorization, client)
        else:
            gateway.authorizer = GitLabAuthorizer(config.authorization, client)
    gateway.dialer = Dialer(config.upstream, close_timeout=config.session.close_timeout)
    await gateway.dialer.start()
    if config.upstream.insecure_skip_tls_verify:
        log.warning("upstream.insecure_skip_tls_verify is on: upstream TLS is NOT verified")
    try:
        yield
    finally:
        await gateway.dialer.aclose()
        await gateway.authorizer.aclose()


async def _drain(app: web.Application) -> None:
    """SIGTERM: fail readiness, let sessions run for the drain period, then close them."""
    gateway = app[GATEWAY]
    gateway.draining = True
    grace = gateway.config.session.shutdown_grace
    pending = [s.done for s in gateway.sessions]
    if pending and grace > 0:
        log.info("draining %d sessions for up to %gs", len(pending), grace)
        await asyncio.wait(pending, timeout=grace)
    gateway.shutdown.set()
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


async def _dispatch(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    request_id = secrets.token_hex(8)
    route = _match_route(gateway, request.path)
    try:
        if route is None:
            if _wants_upgrade(request):
                raise UpgradeNotAllowed("websocket upgrade not allowed")
            return web.Response(status=404, text="not found\n")
        return await _terminal(request, gateway, route, request_id)
    except GatewayError as exc:
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


def _error_response(status: int, text: str, request_id: str) -> web.Response:
    body = f"{text}\nrequest id: {request_id}\n"
    return web.Response(
        status=status,
        text=body,
        headers={"Connection": "close", "X-Request-Id": request_id},
    )


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

    browser_request = _snapshot(request, config.browser.trusted_proxies)
    assert gateway.authorizer is not None and gateway.dialer is not None
    started = time.monotonic()
    answer = await gateway.authorizer.authorize(browser_request)
    if isinstance(answer, PassBack):
        log.info(
            "authorization refused",
            extra={"fields": {"request_id": request_id, "status": answer.status, "route": route}},
        )
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    gateway.dialer.check_allowed(answer.details)
    upstream = await gateway.dialer.dial(
        answer.details, forwarded_for=browser_request.forwarded_for
    )

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
        authorizer=gateway.authorizer,
        request=browser_request,
        grant=answer,
        limits=_limits(config),
        shutdown=gateway.shutdown,
    )
    fields = _session_fields(route, browser_request, answer, chosen, upstream.subprotocol)
    fields["session"] = request_id
    fields["setup_ms"] = round((time.monotonic() - started) * 1000, 1)
    session_log.info("session opened", extra={"fields": fields})
    gateway.sessions.add(session)
    try:
        await session.run()
    finally:
        gateway.sessions.discard(session)
        stop = session.stop or Stop(StopReason.INTERNAL, "session did not record a stop")
        session_log.info("session ended", extra={"fields": fields | _end_fields(session, stop)})
    return browser


def _limits(config: Config) -> SessionLimits:
    return SessionLimits(
        max_duration=config.session.max_duration,
        idle_timeout=config.session.idle_timeout,
        poll_interval=config.authorization.poll_interval,
        poll_jitter=config.authorization.poll_jitter,
        poll_failure_grace=config.authorization.poll_failure_grace,
        close_timeout=config.session.close_timeout,
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
    )


def _is_trusted(address: str, trusted: Sequence[_IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
