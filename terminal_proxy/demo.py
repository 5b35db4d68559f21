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
import logging
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from . import __version__
from .app import build_app
from .authorization.static import COOKIE, Policy, PolicyUser, StaticAuthorizer
from .config import Config, HostPattern, ListenAddress, default_config
from .sessionserver import SessionServer

__all__ = ["DEMO_TERMINAL_PATH", "run_demo"]

log = logging.getLogger("terminal_proxy.demo")

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_DIR = WEB_DIR / "static"
# The terminal the page opens (matched by the default generic route).
DEMO_TERMINAL_PATH = "/demo/terminal.ws"
DEMO_USER = "you"
# The page loads only its own bundle and talks only to its own origin. xterm.js writes
# its colours and cell sizes into style elements at run time (no nonce support), hence
# 'unsafe-inline' for styles only; scripts stay 'self' with no eval.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The recording player (asciinema-player) runs its terminal emulator as WebAssembly.
_PLAYER_HEADERS = _PAGE_HEADERS | {
    "Content-Security-Policy": CSP.replace(
        "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'"
    )
}
# Session ids (file names of recordings): hex, optionally after "<replica id>.".
_RECORDING_NAME = re.compile(r"[a-z0-9-]{0,63}\.?[0-9a-f]{16}")


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
        session=session,
        recording=recording,
        limits=dataclasses.replace(base.limits, max_sessions_per_user=DEMO_TERMINALS_PER_USER),
    )


def add_demo_routes(
    app: web.Application, authorizer: StaticAuthorizer, recordings: Path | None = None
) -> None:
    """The page, its static files, the one-time login, and the recordings (a list at
    /-/recordings/, a player page per recording, the .cast files) when ``recordings``."""

    async def page(request: web.Request) -> web.StreamResponse:
        if authorizer.user_for(tuple(request.headers.items())) is None:
            return _error_page(401, "You are not signed in.")
        return web.FileResponse(WEB_DIR / "index.html", headers=_PAGE_HEADERS)

    async def login(request: web.Request) -> web.StreamResponse:
        cookie = authorizer.login(request.query.get("token", ""))
        if cookie is None:
            return _error_page(403, "This login link is not valid (it may have been used).")
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", path="/")
        return response

    app.router.add_get("/", page)
    app.router.add_get("/-/login", login)
    app.router.add_static("/static", STATIC_DIR, follow_symlinks=False)
    if recordings is None:
        return

    def signed_in(request: web.Request) -> bool:
        return authorizer.user_for(tuple(request.headers.items())) is not None

    async def listing(request: web.Request) -> web.StreamResponse:
        if not signed_in(request):
            return _error_page(401, "You are not signed in.")
        body = _recordings_page(recordings)
        return web.Response(text=body, content_type="text/html", headers=_PAGE_HEADERS)

    async def player(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not signed_in(request):
            return _error_page(401, "You are not signed in.")
        if not _RECORDING_NAME.fullmatch(name) or not (recordings / f"{name}.cast").exists():
            return _error_page(404, "There is no such recording.")
        template = (WEB_DIR / "recording.html").read_text(encoding="utf-8")
        body = template.replace("{{cast_url}}", f"/-/recordings/{name}.cast")
        return web.Response(text=body, content_type="text/html", headers=_PLAYER_HEADERS)

    async def cast(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not signed_in(request):
            return _error_page(401, "You are not signed in.")
        path = recordings / f"{name}.cast"
        if not _RECORDING_NAME.fullmatch(name) or not path.exists():
            return _error_page(404, "There is no such recording.")
        return web.FileResponse(path, headers=_PAGE_HEADERS | {"Content-Type": "text/plain"})

    app.router.add_get("/-/recordings/", listing)
    app.router.add_get("/-/recordings/{name}.cast", cast)
    app.router.add_get("/-/recordings/{name}", player)


def _recordings_page(recordings: Path) -> str:
    """The list of recordings, newest first ("live" while the session still runs)."""
    casts = sorted(recordings.glob("*.cast"), key=lambda p: p.stat().st_mtime, reverse=True)
    items = "".join(
        f'<li><a href="/-/recordings/{p.stem}">{p.stem}</a> '
        f"({p.stat().st_size} bytes{'' if p.with_suffix('.json').exists() else ', live'})</li>"
        for p in casts
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>terminal-proxy recordings</title>"
        '<link rel="stylesheet" href="/static/terminal-proxy.css"></head>'
        f'<body class="recordings"><h1>Recordings</h1><ul id="recordings">{items}</ul>'
        "</body></html>"
    )


def _error_page(status: int, message: str) -> web.Response:
    template = (WEB_DIR / "error.html").read_text(encoding="utf-8")
    body = template.replace("{{message}}", message)
    return web.Response(status=status, text=body, content_type="text/html", headers=_PAGE_HEADERS)


async def run_demo(
    *,
    command: Sequence[str],
    listen: ListenAddress,
    policy: Policy | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM)."""
    if not (STATIC_DIR / "terminal-proxy.js").exists():
        raise RuntimeError(
            f"the web page is not built ({STATIC_DIR} is missing): run scripts/build-web"
        )
    policy = policy or demo_policy()
    async with contextlib.AsyncExitStack() as stack:
        session_server = await stack.enter_async_context(
            SessionServer(command=list(command), host="127.0.0.1")
        )
        # The demo records its sessions (asciicast v2) into a directory removed at exit.
        recordings = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tp-rec-")))
        authorizer = StaticAuthorizer(policy, session_server)
        config = demo_config(listen, session_server.host_port, recordings, policy.max_session_time)
        app = build_app(
            config,
            authorizer=authorizer,
            extra_routes=lambda a: add_demo_routes(a, authorizer, recordings),
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
            site = web.TCPSite(runner, listen.host, listen.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
            user = policy.users[0].name
            token = authorizer.issue_one_time_token(user)
            print(f"terminal-proxy {__version__} demo is ready; open this URL in your browser:")
            print(f"    {base}/-/login?token={token}", flush=True)
            if listen.host not in ("127.0.0.1", "::1", "localhost"):
                log.warning("the demo listens on %s: other hosts can reach it", listen.host)
            if ready is not None:
                ready.set()
            stop = stop or asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
    print("terminal-proxy demo stopped", file=sys.stderr)
