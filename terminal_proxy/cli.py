"""Command line: ``terminal-proxy serve | check-config | demo | version``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__
from .app import GATEWAY, build_app, drain
from .config import (
    Config,
    ConfigError,
    TLSConfig,
    default_config,
    load_config_file,
    validate_for_serving,
)
from .listener import ConnectionGate, GuardedRunner, fd_budget, raise_fd_limit
from .logs import setup_logging

__all__ = ["main", "settle_heap"]

log = logging.getLogger("terminal_proxy")

# Where serve takes --replica-id from when the flag is not given (Kubernetes: the pod name
# through the downward API); unset or empty: the file's session.replica_id.
REPLICA_ID_ENV = "TERMINAL_PROXY_REPLICA_ID"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="terminal-proxy",
        description="A safe web-terminal gateway: browser WebSocket to Kubernetes exec.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", metavar="FILE", help="YAML configuration file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override listen")
    serve.add_argument("--auth-backend", metavar="URL", help="override authorization.backend")
    serve.add_argument("--secret-file", metavar="PATH", help="override authorization.secret_file")
    serve.add_argument(
        "--replica-id",
        metavar="NAME",
        help=f"override session.replica_id (default: ${REPLICA_ID_ENV} when set, "
        "e.g. the pod name)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes sharing the port (SO_REUSEPORT); default 1",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop when installed (auto, the default), or asyncio's own",
    )
    serve.add_argument(
        "--allow-upstream",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="add to upstream.allowed_hosts (repeatable; HOST:* allows any port)",
    )
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")
    demo = sub.add_parser(
        "demo", help="a terminal in your browser on this machine, nothing else to set up"
    )
    demo.add_argument(
        "--command",
        dest="shell_command",
        default=None,
        help="the shell to run (default: $SHELL, else /bin/bash, else /bin/sh)",
    )
    demo.add_argument(
        "--listen",
        default="127.0.0.1:8181",
        metavar="HOST:PORT",
        help="where the page is served (default 127.0.0.1:8181; port 0 picks a free one, "
        "the printed URL shows it)",
    )
    demo.add_argument("--policy", metavar="FILE", help="built-in authorizer policy (YAML)")
    demo.add_argument(
        "--recordings",
        metavar="DIR",
        help="keep session recordings in DIR across restarts (default: a temporary "
        "directory removed when the demo stops)",
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="log debug detail too (e.g. the internal session server's address)",
    )
    demo.add_argument(
        "--max-session-time",
        metavar="DURATION",
        help="end sessions after this long (e.g. 30m; the page offers extensions)",
    )
    revoke = sub.add_parser(
        "revoke", help="close sessions on every replica of a cluster (docs/cluster.md)"
    )
    revoke.add_argument("--config", metavar="FILE", required=True, help="the replicas' config")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", metavar="NAME", help="every session of this user")
    which.add_argument("--session", metavar="ID", help="this session")
    which.add_argument("--route", metavar="NAME", help="every session of this route")
    revoke.add_argument("--reason", metavar="TEXT", default="", help="told to the browsers")
    sessions = sub.add_parser("sessions", help="list a cluster's sessions (docs/cluster.md)")
    sessions.add_argument("--config", metavar="FILE", required=True, help="the replicas' config")
    sessions.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"terminal-proxy {__version__}")
        return 0
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "demo":
        return _demo(args)
    if args.command in ("revoke", "sessions"):
        # Redis is imported only by the cluster's commands (and a cluster's replicas).
        from .cluster.commands import run_command

        return run_command(args)
    return _serve(args)


def _check_config(path: str) -> int:
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    # What serve needs beyond a valid file may come from flags: warn, do not fail.
    for problem in validate_for_serving(config, source=path):
        print(f"warning: {problem}", file=sys.stderr)
    print(f"{path}: ok")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config_file(args.config) if args.config else default_config()
        config = config.with_overrides(
            listen=args.listen,
            auth_backend=args.auth_backend,
            secret_file=args.secret_file,
            allow_upstream=args.allow_upstream,
            replica_id=_replica_id(args),
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    problems = validate_for_serving(config)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 2
    setup_logging(config.logging.level, config.logging.format)
    if args.workers > 1:
        return supervise(args.workers, config.listen.host, config.listen.port)
    try:
        run_loop(serve(config, reuse_port=args.reuse_port), args.event_loop)
    except ImportError as exc:
        log.error("cannot serve: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


def _replica_id(args: argparse.Namespace) -> str | None:
    """--replica-id, else a non-empty $TERMINAL_PROXY_REPLICA_ID, else None (the file's)."""
    if args.replica_id is not None:
        return str(args.replica_id)
    return os.environ.get(REPLICA_ID_ENV) or None


def run_loop(main: Coroutine[Any, Any, None], choice: str = "auto") -> None:
    """Run ``main`` on uvloop (``auto`` when installed, or ``uvloop``) or on asyncio's loop.

    uvloop cuts the relay's per-message and wake-up costs (docs/performance.md has the
    numbers); the behaviour is the same on both, and the test suite runs on asyncio's.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                main.close()
                raise ImportError("--event-loop uvloop: uvloop is not installed") from None
        else:
            log.debug("event loop: uvloop")
            uvloop.run(main)
            return
    asyncio.run(main)


def supervise(workers: int, host: str, port: int) -> int:
    """Run ``workers`` copies of this command on one port (SO_REUSEPORT); forward signals.

    Each worker is an independent gateway (sessions are not shared; re-polls make
    revocation work in every worker). Port 0 is resolved once here so all workers share it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    probe.bind((host, port))
    port = probe.getsockname()[1]
    listen = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    argv = [sys.executable, "-m", "terminal_proxy", *sys.argv[1:]]
    argv += ["--listen", listen, "--workers", "1", "--reuse-port"]
    children = [subprocess.Popen(argv) for _ in range(workers)]  # noqa: S603
    log.info("started %d workers on %s: pids %s", workers, listen, [c.pid for c in children])

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    codes = [child.wait() for child in children]
    probe.close()
    return max(codes, key=abs)


def _demo(args: argparse.Namespace) -> int:
    from .authorization.static import Policy, PolicyError
    from .config import ListenAddress
    from .demo import DemoError, demo_policy, run_demo
    from .units import parse_duration

    command = shlex.split(args.shell_command) if args.shell_command else [_default_shell()]
    try:
        listen = ListenAddress.parse(args.listen)
        policy = (
            Policy.parse(Path(args.policy).read_text(), source=args.policy) if args.policy else None
        )
        if args.max_session_time is not None:
            limit = parse_duration(args.max_session_time)
            policy = dataclasses.replace(policy or demo_policy(), max_session_time=limit)
    except (ValueError, PolicyError, OSError) as exc:
        print(f"terminal-proxy demo: {exc}", file=sys.stderr)
        return 2
    setup_logging("debug" if args.verbose else "info", "text")
    recordings = Path(args.recordings) if args.recordings else None
    try:
        asyncio.run(run_demo(command=command, listen=listen, policy=policy, recordings=recordings))
    except DemoError as exc:
        print(f"terminal-proxy demo: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        log.error("demo: %s", exc)
        return 1
    return 0


def _default_shell() -> str:
    for candidate in (os.environ.get("SHELL", ""), "/bin/bash", "/bin/sh"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return "sh"


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext | None:
    """The listener's TLS context (None without ``tls.cert_file``); raises OSError/SSLError."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def reload_certificate(context: ssl.SSLContext, tls: TLSConfig) -> None:
    """Load the (replaced) cert and key files into the live context, for new connections.

    They are tried in a scratch context first, so a bad pair (half-written files, a key
    that does not match) leaves the live context serving the old certificate.
    """
    assert tls.cert_file is not None and tls.key_file is not None
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert_file, tls.key_file)
    context.load_cert_chain(tls.cert_file, tls.key_file)


async def serve(config: Config, *, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then drain and close every session.

    SIGHUP reloads the TLS certificate (``tls``) and reopens the audit file.
    """
    tls = server_ssl_context(config.tls)
    main_fds, metrics_fds = fd_budget(raise_fd_limit())
    app = build_app(config, reuse_port=reuse_port)
    gateway = app[GATEWAY]
    gateway.metrics_fd_budget = metrics_fds
    limits = config.limits
    gate = ConnectionGate(
        "main",
        head_timeout=limits.request_head_timeout,
        max_http=limits.max_http_connections,
        fd_budget=main_fds,
        # A session holds its upstream connection, and a recording file when recorded.
        upgraded_extra_fds=2 if config.recording.routes else 1,
        on_refused=lambda reason: gateway.metrics.connections_refused.labels(reason).inc(),
    )
    log.info(
        "connections: request head timeout %gs, keep-alive timeout %gs, at most %s not "
        "upgraded, file descriptor budget %d (main) + %d (metrics)",
        limits.request_head_timeout,
        limits.keepalive_timeout,
        limits.max_http_connections or "unlimited",
        main_fds,
        metrics_fds,
    )
    runner = GuardedRunner(
        app,
        gate,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=limits.keepalive_timeout,
        # A client that hangs up cancels its handler: an authorization or upstream dial
        # in flight stops at once and frees its slots (a session ends as browser_left).
        handler_cancellation=True,
        # Handlers still running after drain + close get cancelled by aiohttp.
        shutdown_timeout=config.session.shutdown_grace + config.session.close_timeout + 2,
    )
    await runner.setup()
    settle_heap()
    loop = asyncio.get_running_loop()
    try:
        site = web.TCPSite(
            runner,
            config.listen.host,
            config.listen.port,
            backlog=4096,
            reuse_port=reuse_port or None,
            ssl_context=tls,
        )
        await site.start()
        scheme = "https" if tls is not None else "http"
        for host, port, *_ in runner.addresses:
            log.info("terminal-proxy %s listening on %s://%s:%d", __version__, scheme, host, port)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, _reload, app, tls)
        await stop.wait()
        log.info("shutting down: draining sessions")
        # Stop accepting, then drain while every open connection is still read.
        await site.stop()
        await drain(app)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await runner.cleanup()
    log.info("stopped")


def settle_heap() -> None:
    """Move what start-up built (modules, config, the app and its clients) out of the
    collector's way: a full collection then walks only what sessions allocate, not the
    ~60,000 objects of the loaded program (docs/performance.md, "garbage collection")."""
    gc.collect()
    gc.freeze()


def _reload(app: web.Application, tls: ssl.SSLContext | None) -> None:
    """SIGHUP: new certificate for new connections; audit file reopened (log rotation)."""
    gateway = app[GATEWAY]
    if tls is not None:
        try:
            reload_certificate(tls, gateway.config.tls)
        except (OSError, ssl.SSLError) as exc:
            log.error("SIGHUP: TLS certificate not reloaded, keeping the old one: %s", exc)
        else:
            log.info("SIGHUP: TLS certificate reloaded from %s", gateway.config.tls.cert_file)
    if gateway.running is not None:
        try:
            gateway.running.audit.reopen()
        except OSError as exc:
            log.error("SIGHUP: audit file not reopened: %s", exc)
