"""`terminal-proxy demo` as a user meets it: what it prints, a busy port, its flags, the
recordings it keeps, and its log lines. Each test runs the real command as a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.support.logcapture import append_external_log, remember_secret
from tests.support.process import run_cli

LOGIN_URL = re.compile(r"(http://\S+)/-/login\?token=(\S+)")


class DemoProcess:
    def __init__(self, proc: asyncio.subprocess.Process, banner: list[str]) -> None:
        self.proc = proc
        self.banner = banner
        match = LOGIN_URL.search("\n".join(banner))
        assert match, banner
        self.base, self.token = match.group(1), match.group(2)
        remember_secret(self.token)
        self.stderr = ""

    async def stop(self) -> str:
        """SIGTERM; the exit code must be 0. Returns everything it wrote to stderr."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, err = await self.proc.communicate()
        self.stderr += err.decode()
        assert self.proc.returncode == 0, self.stderr
        return self.stderr

    async def signed_in(self) -> aiohttp.ClientSession:
        client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with client.get(f"{self.base}/-/login?token={self.token}") as response:
            assert response.status == 200
        return client


@contextlib.asynccontextmanager
async def demo(*args: str) -> AsyncIterator[DemoProcess]:
    """``terminal-proxy demo`` on a free port, once its banner is printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "terminal_proxy",
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--command",
        "sh",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PS1": "$ "},
    )
    assert proc.stdout is not None
    banner: list[str] = []
    async with asyncio.timeout(30):
        while not banner or not banner[-1].startswith("Stop the demo"):
            raw = await proc.stdout.readline()
            assert raw, f"demo exited early: {banner}"
            banner.append(raw.decode().rstrip())
    running = DemoProcess(proc, banner)
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
        # The banner prints the one-time login token on purpose (stdout, for the user);
        # what the demo logs (stderr) is appended as it is, for the secrets check.
        shown = [line.replace(running.token, "<login token>") for line in banner]
        append_external_log("demo", [*shown, *running.stderr.splitlines()])


async def run_session(client: aiohttp.ClientSession, base: str, *, close_code: int) -> str:
    """Open the demo's terminal over v1.terminal-proxy, run `exit 0` (close_code 1000) or
    leave with close_code; returns the session id from the hello."""
    async with client.ws_connect(
        f"{base.replace('http', 'ws', 1)}/demo/terminal.ws",
        protocols=("v1.terminal-proxy",),
        origin=base,
    ) as ws:
        hello = await ws.receive_json(timeout=15)
        assert hello["type"] == "hello"
        assert hello["resume_grace"] > 0
        if close_code != 1000:
            await ws.close(code=close_code)
            return str(hello["session"])
        await ws.send_bytes(b"exit 0\n")
        async with asyncio.timeout(15):
            async for _ in ws:
                pass
        assert ws.close_code == 1000
        return str(hello["session"])


async def test_banner_shows_the_login_and_recordings_urls_only() -> None:
    """At default verbosity the user sees the login URL and the recordings page; the
    internal session server's address is a debug detail."""
    async with demo() as running:
        stderr = await running.stop()
    text = "\n".join(running.banner)
    assert f"{running.base}/-/recordings/" in text
    assert "--recordings DIR" in text
    assert "https://" not in text + stderr
    assert "session server" not in stderr


async def test_busy_port_says_which_flag_picks_another() -> None:
    """A taken port: one line naming --listen …:0, and nothing else was started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_cli("demo", "--verbose", "--listen", f"127.0.0.1:{port}")
    assert code == 1
    assert out == ""
    assert f"127.0.0.1:{port} is already in use" in err
    assert "--listen 127.0.0.1:0" in err
    assert "session server" not in err  # bound first: the session server never started
    assert "Traceback" not in err


async def test_help_describes_every_demo_flag() -> None:
    code, out, _ = await run_cli("demo", "--help")
    assert code == 0
    flags = re.findall(r"^  (--[a-z-]+)(.*)$", out, re.MULTILINE)
    assert {f for f, _ in flags} >= {"--listen", "--recordings", "--command", "--verbose"}
    for flag, rest in flags:
        described = rest.split(maxsplit=1)[1:] if rest.strip() else []
        # The help text follows the metavar on the same line or on the next one.
        assert described or re.search(rf"^  {flag}.*\n {{10,}}\S", out, re.MULTILINE), flag


async def test_favicon_is_served() -> None:
    async with demo() as running:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"{running.base}/favicon.ico") as r,
        ):
            assert r.status == 200
            assert r.content_type == "image/svg+xml"
            assert "<svg" in await r.text()
        await running.stop()


async def test_recordings_dir_keeps_recordings_across_restarts(tmp_path: Path) -> None:
    """--recordings DIR: a session's recording is listed with its start, duration, user,
    command and size, and is still listed after the demo restarts."""
    spool = tmp_path / "recordings"
    async with demo("--recordings", str(spool)) as running:
        assert f"kept in {spool}" in "\n".join(running.banner)
        client = await running.signed_in()
        async with client:
            session = await run_session(client, running.base, close_code=1000)
        await running.stop()
    assert (spool / f"{session}.cast").exists() and (spool / f"{session}.json").exists()
    async with demo("--recordings", str(spool)) as again:
        client = await again.signed_in()
        async with client, client.get(f"{again.base}/-/recordings/") as response:
            page = await response.text()
        await again.stop()
    row = re.search(rf'<tr><td><a href="/-/recordings/{session}">(.*?)</tr>', page)
    assert row, page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", f"<td>{row.group(1)}")
    started, duration, user, command, size, ended = (re.sub("<[^>]+>", "", c) for c in cells)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", started), started
    assert re.fullmatch(r"\d+s", duration), duration
    assert (user, command, ended) == ("you", "sh", "exit code 0")
    assert re.fullmatch(r"\d+ bytes|\d+\.\d KiB", size), size
    assert 'href="/"' in page  # back to the terminal


async def test_a_page_leaving_is_logged_as_such() -> None:
    """A browser close with 1001 (the page was left) detaches the session: the log says
    so, key=value, and never calls it a lost connection."""
    async with demo() as running:
        client = await running.signed_in()
        async with client:
            session = await run_session(client, running.base, close_code=1001)
        stderr = await running.stop()
    detached = [line for line in stderr.splitlines() if "browser detached" in line]
    assert detached, stderr
    assert f"session={session}" in detached[0]
    assert 'detail="page closed or left (1001)"' in detached[0]
    assert "connection lost" not in stderr
