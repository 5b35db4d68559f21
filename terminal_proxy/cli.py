"""Command line: ``terminal-proxy serve | check-config | version``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from . import __version__
from .app import build_app
from .config import Config, ConfigError, default_config, load_config_file, validate_for_serving
from .logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("terminal_proxy")


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
        "--allow-upstream",
        metavar="HOST:PORT",
        action="append",
        default=[],
        help="add to upstream.allowed_hosts (repeatable; HOST:* allows any port)",
    )
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"terminal-proxy {__version__}")
        return 0
    if args.command == "check-config":
        return _check_config(args.file)
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
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then drain and close every session."""
    app = build_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        # Handlers still running after drain + close get cancelled by aiohttp.
        shutdown_timeout=config.session.shutdown_grace + config.session.close_timeout + 2,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.listen.host, config.listen.port, backlog=1024)
        await site.start()
        for host, port, *_ in runner.addresses:
            log.info("terminal-proxy %s listening on http://%s:%d", __version__, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down: draining sessions")
    finally:
        await runner.cleanup()
    log.info("stopped")
