"""``terminal-proxy demo``: a working terminal in the browser, on one machine.

One process runs the gateway, the built-in authorizer, the PTY session server and the
web page, all on 127.0.0.1. It prints one URL carrying a one-time login token; opening
it sets a session cookie and shows the page, whose WebSocket the gateway authorizes
with the built-in policy and relays to a fresh shell on the session server: the same
path a production deployment takes, with every part local.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from . import __version__
from .app import build_app
from .authorization.static import Policy, PolicyUser, StaticAuthorizer
from .config import Config, HostPattern, ListenAddress, default_config
from .demo_pages import STATIC_DIR, add_demo_routes
from .sessionserver import SessionServer

__all__ = ["DEMO_TERMINAL_PATH", "DemoError", "run_demo"]

log = logging.getLogger("terminal_proxy.demo")

# The terminal the page opens (matched by the default generic route).
DEMO_TERMINAL_PATH = "/demo/terminal.ws"
DEMO_USER = "you"


class DemoError(Exception):
    """The demo cannot start; the message says what to do."""


# A time-limited demo session (--max-session-time) may be extended this often, each time
# by its limit again.
DEMO_EXTENSIONS = 3
# Terminals one demo user may have, detached ones (a reloaded page's, waiting for a
# resume) included: a further one ends that user's oldest detached terminal, so reloads
# never fill the session server (SessionServer.max_sessions, 64).
DEMO_TERMINALS_PER_USER = 8


def demo_policy() -> Policy:
    """The built-in policy: one user, no time limit."""
    return Policy((PolicyUser(DEMO_USER),))


def demo_config(
    listen: ListenAddress,
    session_server: str,
    recordings: Path | None = None,
    max_session_time: float = 0.0,
) -> Config:
    """Embedded defaults: local only, the session server the only upstream, at most
    DEMO_TERMINALS_PER_USER terminals per user (a further one ends the user's oldest
    detached terminal); sessions recorded into ``recordings`` when given (the demo's
    temporary directory). With a time
    limit the page is warned before the end (5 minutes, or half the limit when shorter)
    and may extend the session by the limit again, DEMO_EXTENSIONS times."""
    base = default_config()
    recording = base.recording
    if recordings is not None:
        recording = dataclasses.replace(recording, routes=("generic",), dir=str(recordings))
    session = dataclasses.replace(base.session, shutdown_grace=0.0)
    if max_session_time > 0:
        session = dataclasses.replace(
            session,
            expiry_warning=min(session.expiry_warning, max_session_time / 2),
            extension=max_session_time,
            max_extensions=DEMO_EXTENSIONS,
        )
    return dataclasses.replace(
        base,
        listen=listen,
        upstream=dataclasses.replace(
            base.upstream, allowed_hosts=(HostPattern.parse(session_server),)
        ),
        browser=dataclasses.replace(base.browser, allowed_hosts=demo_hosts(listen)),
        session=session,
        recording=recording,
        limits=dataclasses.replace(base.limits, max_sessions_per_user=DEMO_TERMINALS_PER_USER),
    )


def demo_hosts(listen: ListenAddress) -> tuple[HostPattern, ...]:
    """``browser.allowed_hosts`` of the demo: this machine's names (stops DNS rebinding
    of a page that opens terminals), and the listen address when it is a specific one; a
    wildcard listen address (0.0.0.0, ::) is reached under names the demo cannot know."""
    if listen.host in ("0.0.0.0", "::", ""):
        return ()
    names = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    own = f"[{listen.host}]:*" if ":" in listen.host else f"{listen.host}:*"
    if own not in names:
        names.append(own)
    return tuple(HostPattern.parse(name) for name in names)


def bind_listener(listen: ListenAddress) -> socket.socket:
    """The demo's listening socket, bound before anything else starts; DemoError (with the
    flag that picks another port) when the address is taken."""
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)
        family, *_, address = infos[0]
        return socket.create_server(address, family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise DemoError(
                f"{listen} is already in use (another demo, or another program): pick another "
                f"port with --listen {_with_port(listen, 'PORT')}, or --listen "
                f"{_with_port(listen, '0')} for any free one (the banner then shows it)"
            ) from None
        raise DemoError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


def _recordings_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"--recordings {path}: {exc.strerror or exc}") from None
    return path


def _with_port(listen: ListenAddress, port: str) -> str:
    return f"[{listen.host}]:{port}" if ":" in listen.host else f"{listen.host}:{port}"


def banner(base: str, token: str, recordings: Path, kept: bool) -> str:
    """What the demo prints once it is ready: the login URL first, then the recordings."""
    where = (
        f"kept in {recordings}"
        if kept
        else "removed when the demo stops; --recordings DIR keeps them"
    )
    return (
        f"terminal-proxy {__version__} demo is ready; open this URL in your browser:\n"
        f"    {base}/-/login?token={token}\n"
        f"Recordings of your sessions ({where}):\n"
        f"    {base}/-/recordings/\n"
        "Stop the demo with Ctrl+C."
    )


async def run_demo(
    *,
    command: Sequence[str],
    listen: ListenAddress,
    policy: Policy | None = None,
    recordings: Path | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM). Sessions are recorded into
    ``recordings`` (created when missing), else into a directory removed at exit.
    Raises DemoError when the demo cannot start."""
    if not (STATIC_DIR / "terminal-proxy.js").exists():
        raise DemoError(
            f"the web page is not built ({STATIC_DIR} is missing): run scripts/build-web"
        )
    policy = policy or demo_policy()
    # The address is checked first: nothing else starts when it is taken.
    listener = bind_listener(listen)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(listener.close)
        if recordings is not None:
            spool = _recordings_dir(recordings)
        else:
            spool = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tp-rec-")))
        session_server = await stack.enter_async_context(
            SessionServer(command=list(command), host="127.0.0.1")
        )
        authorizer = StaticAuthorizer(policy, session_server)
        config = demo_config(listen, session_server.host_port, spool, policy.max_session_time)
        app = build_app(
            config,
            authorizer=authorizer,
            extra_routes=lambda a: add_demo_routes(a, authorizer, policy, command, spool),
        )
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,  # as serve: a client hanging up stops its handshake
            shutdown_timeout=5,
        )
        await runner.setup()
        try:
            site = web.SockSite(runner, listener)
            await site.start()
            host, port = runner.addresses[0][:2]
            base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
            # Signals are handled before the banner: whoever reads it may stop us at once.
            stop = stop or asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            token = authorizer.issue_one_time_token(policy.users[0].name)
            print(banner(base, token, spool, recordings is not None), flush=True)
            if listen.host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("the demo listens on %s: other hosts can reach it", listen.host)
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
    print("terminal-proxy demo stopped", file=sys.stderr)
