"""The demo's own pages: the terminal page, the one-time login, the favicon and the
recordings (a list at /-/recordings/, a player page per recording, the .cast files).

Every page but the login needs the sign-in cookie the login sets; without it the error
page says how to get a new link (the demo prints one at start).
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from .authorization.static import COOKIE, Policy, StaticAuthorizer

__all__ = ["PAGE_HEADERS", "WEB_DIR", "add_demo_routes", "recording_rows"]

WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_DIR = WEB_DIR / "static"
# The page loads only its own bundle and talks only to its own origin. xterm.js writes
# its colours and cell sizes into style elements at run time (no nonce support), hence
# 'unsafe-inline' for styles only; scripts stay 'self' with no eval.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The recording player (asciinema-player) runs its terminal emulator as WebAssembly.
_PLAYER_HEADERS = PAGE_HEADERS | {
    "Content-Security-Policy": CSP.replace(
        "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'"
    )
}
# Session ids (file names of recordings): hex, optionally after "<replica id>.".
_RECORDING_NAME = re.compile(r"[a-z0-9-]{0,63}\.?[0-9a-f]{16}")
# The tab's icon: a prompt on the page's header colour (inline, so no package data).
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="6" fill="#1d2126"/>'
    '<path d="M7 10l7 6-7 6" fill="none" stroke="#4c8dff" stroke-width="3" '
    'stroke-linecap="round" stroke-linejoin="round"/>'
    '<path d="M16 23h9" stroke="#d7dadf" stroke-width="3" stroke-linecap="round"/></svg>'
)
NOT_SIGNED_IN = "You are not signed in (or the demo has restarted since you signed in)."


@dataclasses.dataclass(frozen=True, slots=True)
class RecordingRow:
    """One line of the recordings list."""

    name: str
    started: str  # "2026-01-02 15:04:05 UTC"
    duration: str  # "1m 05s", or "live" while the session runs
    user: str
    command: str
    size: int
    ended: str  # how it ended ("exit code 0", "browser_left", …); "" while live


def add_demo_routes(
    app: web.Application,
    authorizer: StaticAuthorizer,
    policy: Policy,
    command: Sequence[str],
    recordings: Path | None = None,
) -> None:
    """The page, its static files, the favicon, the one-time login, and the recordings
    when ``recordings`` (``command`` is the session server's default command)."""

    def signed_in(request: web.Request) -> bool:
        return authorizer.user_for(tuple(request.headers.items())) is not None

    async def page(request: web.Request) -> web.StreamResponse:
        if not signed_in(request):
            return error_page(401, NOT_SIGNED_IN)
        return web.FileResponse(WEB_DIR / "index.html", headers=PAGE_HEADERS)

    async def login(request: web.Request) -> web.StreamResponse:
        cookie = authorizer.login(request.query.get("token", ""))
        if cookie is None:
            return error_page(403, "This login link is not valid (it may have been used).")
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", path="/")
        return response

    async def favicon(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=FAVICON,
            content_type="image/svg+xml",
            headers={"Cache-Control": "max-age=86400", "X-Content-Type-Options": "nosniff"},
        )

    app.router.add_get("/", page)
    app.router.add_get("/-/login", login)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/favicon.svg", favicon)
    app.router.add_static("/static", STATIC_DIR, follow_symlinks=False)
    if recordings is None:
        return
    commands = {user.name: user.command or tuple(command) for user in policy.users}

    async def listing(request: web.Request) -> web.StreamResponse:
        if not signed_in(request):
            return error_page(401, NOT_SIGNED_IN)
        body = _recordings_page(recording_rows(recordings, commands))
        return web.Response(text=body, content_type="text/html", headers=PAGE_HEADERS)

    async def player(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not signed_in(request):
            return error_page(401, NOT_SIGNED_IN)
        if not _RECORDING_NAME.fullmatch(name) or not (recordings / f"{name}.cast").exists():
            return error_page(404, "There is no such recording.")
        template = (WEB_DIR / "recording.html").read_text(encoding="utf-8")
        body = template.replace("{{cast_url}}", f"/-/recordings/{name}.cast")
        return web.Response(text=body, content_type="text/html", headers=_PLAYER_HEADERS)

    async def cast(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not signed_in(request):
            return error_page(401, NOT_SIGNED_IN)
        path = recordings / f"{name}.cast"
        if not _RECORDING_NAME.fullmatch(name) or not path.exists():
            return error_page(404, "There is no such recording.")
        return web.FileResponse(path, headers=PAGE_HEADERS | {"Content-Type": "text/plain"})

    app.router.add_get("/-/recordings/", listing)
    app.router.add_get("/-/recordings/{name}.cast", cast)
    app.router.add_get("/-/recordings/{name}", player)


def recording_rows(recordings: Path, commands: Mapping[str, Sequence[str]]) -> list[RecordingRow]:
    """The recordings in ``recordings``, newest first. A finished one is described by its
    metadata JSON (docs/recording.md); a live one (no JSON yet) by its cast header."""
    rows: list[tuple[float, RecordingRow]] = []
    for cast in recordings.glob("*.cast"):
        if not _RECORDING_NAME.fullmatch(cast.stem):
            continue
        try:
            size = cast.stat().st_size
            started = _cast_timestamp(cast)
            meta = _read_json(cast.with_suffix(".json"))
        except OSError:
            continue  # rotated away meanwhile
        user = str(meta.get("user", "-")) if meta else "-"
        if meta:
            seconds = meta.get("duration_s")
            duration = _duration(seconds) if isinstance(seconds, int | float) else "-"
            exit_code = meta.get("exit_code")
            ended = f"exit code {exit_code}" if isinstance(exit_code, int) else meta.get("stop")
        else:
            duration, ended = "live", ""
        command = " ".join(commands.get(user, ())) or "-"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
        row = RecordingRow(cast.stem, stamp, duration, user, command, size, str(ended or ""))
        rows.append((started, row))
    rows.sort(key=lambda item: item[0], reverse=True)
    return [row for _, row in rows]


def _cast_timestamp(cast: Path) -> float:
    """The asciicast header's start time (the file's mtime when the header has none)."""
    with cast.open(encoding="utf-8") as f:
        header = f.readline()
    try:
        stamp = json.loads(header).get("timestamp")
    except (ValueError, AttributeError):
        stamp = None
    return float(stamp) if isinstance(stamp, int | float) else cast.stat().st_mtime


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _size(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _recordings_page(rows: list[RecordingRow]) -> str:
    """The list of recordings, newest first."""
    e = html.escape
    body = "".join(
        f'<tr><td><a href="/-/recordings/{e(r.name)}">{e(r.started)}</a></td>'
        f'<td class="duration">{e(r.duration)}</td><td>{e(r.user)}</td>'
        f"<td><code>{e(r.command)}</code></td><td>{e(_size(r.size))}</td>"
        f"<td>{e(r.ended)}</td></tr>"
        for r in rows
    )
    table = (
        '<table id="recordings"><thead><tr><th>started</th><th>duration</th><th>user</th>'
        "<th>command</th><th>size</th><th>ended</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
        if rows
        else '<p id="recordings">No recordings yet: every terminal session is recorded.</p>'
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>terminal-proxy recordings</title>"
        '<link rel="icon" href="/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/terminal-proxy.css"></head>'
        '<body class="recordings"><header><h1>terminal-proxy demo: recordings</h1>'
        '<a id="back" href="/">back to the terminal</a></header>'
        f'<main class="listing">{table}</main></body></html>'
    )


def error_page(status: int, message: str) -> web.Response:
    template = (WEB_DIR / "error.html").read_text(encoding="utf-8")
    body = template.replace("{{message}}", html.escape(message))
    return web.Response(status=status, text=body, content_type="text/html", headers=PAGE_HEADERS)
