"""The aiohttp application: routes, start-up of the gateway's services, and the drain.

A terminal request's own path (checks → authorization → dial → upgrade → relay) is
``handshake.py``; this module wires it into an app: ``build_app`` registers the routes,
the cleanup context starts and stops the authorizers and the audit log, builds the dialer (and
the metrics listener), and ``drain`` ends sessions on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .audit import AuditLog
from .authorization import Authorizer
from .authorization.gitlab import GitLabAuthorizer
from .authorization.http import new_client
from .authorization.native import NativeAuthorizer
from .authorization.observed import ObservedAuthorizer
from .config import ClusterConfig, Config
from .gateway import GATEWAY, Gateway, Services
from .handshake import dispatch, new_request_id
from .listener import ConnectionGate, GuardedRunner, PeerLog
from .metrics import CONTENT_TYPE
from .ratelimit import RateLimiter
from .upstream import Dialer

__all__ = ["GATEWAY", "Gateway", "build_app", "drain", "new_request_id"]

log = logging.getLogger("terminal_proxy.gateway")


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
    gateway = Gateway(config, reuse_port=reuse_port, given_authorizer=authorizer)
    app[GATEWAY] = gateway
    gateway.replay_budget.cap = config.session.resume_memory_cap
    limits = config.limits
    gateway.client_rate = RateLimiter(limits.client_handshake_rate, limits.client_handshake_burst)
    gateway.user_rate = RateLimiter(limits.user_handshake_rate, limits.user_handshake_burst)
    gateway.metrics.sessions_detached.set_function(gateway.registry.detached)
    if config.recording.routes and config.recording.dir is None:
        raise ValueError("recording.routes is set but recording.dir is not")
    app.router.add_get("/-/health", _health)
    app.router.add_get("/-/readiness", _readiness)
    if extra_routes is not None:
        extra_routes(app)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    app.cleanup_ctx.append(_clients)
    if config.cluster.enabled:
        app.cleanup_ctx.append(_cluster)
    app.cleanup_ctx.append(_metrics_listener)
    app.cleanup_ctx.append(_forwarding)
    app.on_shutdown.append(drain)
    return app


async def _clients(app: web.Application) -> AsyncIterator[None]:
    """Start the gateway's services for the app's life; stop them after it."""
    gateway = app[GATEWAY]
    config = gateway.config
    authorizer = gateway.given_authorizer
    if authorizer is None and config.authorization.backend is not None:
        client = new_client(config.authorization)
        if config.authorization.contract == "native":
            authorizer = NativeAuthorizer(config.authorization, client)
        else:
            authorizer = GitLabAuthorizer(config.authorization, client)
    upstream_config = config.upstream
    if any(route.kind != "authorization" for route in config.routes):
        # kubernetes_asyncio costs ~0.3 s and tens of MB to import: only when used.
        from .authorization.build import with_kubernetes

        # Kubernetes routes: the clusters' API hosts join the upstream allowlist.
        authorizer, upstream_config = await with_kubernetes(config, authorizer)
    if authorizer is None:
        raise ValueError("authorization.backend is not set")
    audit = AuditLog(config.audit)
    audit.open()
    # The dialer holds no connections (each dial opens its own): nothing to start or stop.
    dialer = Dialer(upstream_config, close_timeout=config.session.close_timeout)
    if config.upstream.insecure_skip_tls_verify:
        log.warning("upstream.insecure_skip_tls_verify is on: upstream TLS is NOT verified")
    gateway.running = Services(
        authorizer=authorizer,
        session_authorizer=ObservedAuthorizer(authorizer, gateway.metrics),
        dialer=dialer,
        audit=audit,
    )
    try:
        yield
    finally:
        gateway.running = None
        audit.close()
        await authorizer.aclose()


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    """Cluster mode (``cluster.redis_url``): the limits count across replicas, sessions
    are registered and revocations pushed through Redis (docs/cluster.md)."""
    # Redis is imported only when a cluster is configured.
    from .cluster.agent import CLUSTER, ClusterAgent

    gateway = app[GATEWAY]
    agent = ClusterAgent(
        gateway.config,
        gateway.registry,
        gateway.metrics.registry,
        internal_url=_advertised(gateway.config.cluster),
    )
    gateway.registry.shared = agent.counts
    limits = gateway.config.limits
    if limits.client_handshake_rate or limits.user_handshake_rate:
        from .cluster.rates import RedisRates

        gateway.shared_rates = RedisRates(agent.client)
    gateway.not_ready = agent.ready_problem
    app[CLUSTER] = agent
    await agent.start()
    log.info(
        "cluster: replica %s on Redis %s (%s)",
        agent.replica_id,
        gateway.config.cluster.redis_url,
        agent.state.value,
    )
    try:
        yield
    finally:
        await agent.aclose()


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
    limits = gateway.config.limits
    # Its own connections are timed and capped too, within the descriptors kept free of
    # the main listener, so probes are answered while the main listener is full.
    gate = ConnectionGate(
        "metrics",
        head_timeout=limits.request_head_timeout,
        fd_budget=gateway.metrics_fd_budget,
        on_refused=lambda reason: gateway.metrics.connections_refused.labels(reason).inc(),
        peer_log=PeerLog(log),
    )
    runner = GuardedRunner(
        metrics_app,
        gate,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=limits.keepalive_timeout,
    )
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


async def _forwarding(app: web.Application) -> AsyncIterator[None]:
    """``cluster``: the forwarder (the directory: ``peers``, else Redis) and the internal
    listener (``internal_listen``) for the app's life. Not imported at all without them."""
    gateway = app[GATEWAY]
    config = gateway.config
    cluster = config.cluster
    if cluster.secret is None or not (cluster.forwarding or cluster.internal_listen):
        yield
        return
    from contextlib import AsyncExitStack

    from .cluster.directory import RedisDirectory, ReplicaDirectory, StaticDirectory
    from .cluster.forward import Forwarder
    from .cluster.internal import internal_listener

    secret = cluster.secret.reveal()
    async with AsyncExitStack() as stack:
        if cluster.forwarding:
            directory: ReplicaDirectory
            if cluster.peers:
                directory = StaticDirectory(cluster.peers)
            else:
                from .cluster.agent import CLUSTER

                directory = RedisDirectory(app[CLUSTER].client)
            forwarder = Forwarder(
                replica_id=config.session.replica_id,
                secret=secret,
                directory=directory,
                timeout=config.limits.handshake_timeout,
                close_timeout=config.session.close_timeout,
                max_message_size=config.browser.max_message_size,
                outcome=lambda outcome: gateway.metrics.forwarded.labels(outcome).inc(),
            )
            stack.push_async_callback(forwarder.aclose)
            gateway.forwarder = forwarder
        if cluster.internal_listen is not None:

            def share(internal: web.Application) -> None:
                internal[GATEWAY] = gateway

            gateway.internal_url = await stack.enter_async_context(
                internal_listener(
                    cluster.internal_listen,
                    secret=secret,
                    serve=dispatch,
                    share=share,
                    refused=gateway.metrics.forwarded_refused.inc,
                )
            )
        try:
            yield
        finally:
            gateway.forwarder = None


def _advertised(cluster: ClusterConfig) -> str:
    """The internal URL this replica advertises in the Redis directory: ``internal_url``,
    else ``internal_listen`` when it names a reachable address."""
    if cluster.internal_url or cluster.internal_listen is None:
        return cluster.internal_url
    if cluster.internal_listen.host in ("0.0.0.0", "::", ""):
        return ""
    return f"http://{cluster.internal_listen}"


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
    pending = [s.done for s in gateway.registry.live]
    if pending and grace > 0:
        log.info("draining %d sessions for up to %gs", len(pending), grace)
        await asyncio.wait(pending, timeout=grace)
    gateway.shutdown.set()
    for session in list(gateway.registry.live):
        session.shut_down()
    pending = [s.done for s in gateway.registry.live]
    if pending:
        log.info("closing %d sessions: server shutting down", len(pending))
        await asyncio.wait(pending, timeout=gateway.config.session.close_timeout + 1)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readiness(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    if gateway.draining:
        return web.Response(status=503, text="draining\n")
    problem = gateway.not_ready() if gateway.not_ready is not None else ""
    if problem:
        return web.Response(status=503, text=f"{problem}\n")
    return web.Response(text="ready\n")
