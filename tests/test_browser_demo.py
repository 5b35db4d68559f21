"""`terminal-proxy demo` in a real headless Chromium (Debian's, driven by Playwright).

The demo runs as a real process; the browser opens the printed one-time URL, types into
the xterm.js terminal, and reads the terminal's buffer. Chromium comes from
scripts/install-browser (run by `make test`); if it is missing these tests fail, they do
not skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.support.logcapture import append_external_log, remember_secret

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(os.environ.get("TERMINAL_PROXY_TEST_OUTPUT", ROOT / "test-output"))
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOGIN_URL = re.compile(r"(http://\S+/-/login\?token=(\S+))")

pytestmark = pytest.mark.browser


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed: run scripts/install-browser (make test does)")
    return path


class Demo:
    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.base = url.split("/-/login", 1)[0]


@contextlib.asynccontextmanager
async def start_demo(
    *args: str, program: Sequence[str] = (sys.executable, "-m", "terminal_proxy"), cwd: Path = ROOT
) -> AsyncIterator[Demo]:
    """``terminal-proxy demo`` as a process, ready once it has printed its login URL.
    ``program`` runs terminal-proxy (tests/test_packaging.py: an installed wheel's script)."""
    env = {**os.environ, "PS1": "$ ", "TERM": "xterm-256color"}
    proc = await asyncio.create_subprocess_exec(
        *program,
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--command",
        "bash --norc --noprofile",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    url = ""
    async with asyncio.timeout(30):
        while not url:
            raw = await proc.stdout.readline()
            if not raw:
                err = (await proc.stderr.read()).decode(errors="replace")
                pytest.fail(f"demo exited before printing its URL: {lines} {err}")
            line = raw.decode().rstrip()
            lines.append(line)
            match = LOGIN_URL.search(line)
            if match:
                url = match.group(1)
                remember_secret(match.group(2))
    try:
        yield Demo(proc, url)
    finally:
        if proc.returncode is None:
            proc.terminate()
        async with asyncio.timeout(20):
            rest_out, rest_err = await proc.communicate()
        # The banner prints the one-time login token on purpose (stdout, for the user);
        # what the demo logs (stderr) is appended as it is, for the secrets check.
        token = LOGIN_URL.search(url)
        banner = [*lines, *rest_out.decode().splitlines()]
        if token is not None:
            banner = [line.replace(token.group(2), "<login token>") for line in banner]
        append_external_log("demo", [*banner, *rest_err.decode().splitlines()])
        assert proc.returncode == 0, rest_err.decode()[-2000:]


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    async with start_demo() as running:
        yield running


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_terminal(chromium: Browser, demo: Demo) -> Page:
    page = await chromium.new_page(viewport={"width": 1000, "height": 600})
    await page.goto(demo.url)
    await page.wait_for_function("() => window.terminalProxy && window.terminalProxy.term")
    await wait_for_screen(page, r"^\$ ")
    await page.locator(".xterm-helper-textarea").focus()
    return page


SCREEN_JS = """() => {
  const buffer = window.terminalProxy.term.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return lines.join("\\n");
}"""


async def screen(page: Page) -> str:
    return str(await page.evaluate(SCREEN_JS))


async def wait_for_screen(page: Page, pattern: str) -> None:
    """Wait until the terminal shows a line matching ``pattern`` (a regex)."""
    await page.wait_for_function(
        """(pattern) => {
          const re = new RegExp(pattern, "m");
          const buffer = window.terminalProxy.term.buffer.active;
          for (let i = 0; i < buffer.length; i++) {
            if (re.test(buffer.getLine(i).translateToString(true))) return true;
          }
          return false;
        }""",
        arg=pattern,
        timeout=15_000,
    )


async def test_echo_hello_in_the_browser(chromium: Browser, demo: Demo) -> None:
    """Typing `echo hello` in the page shows `hello` from a real shell; screenshot saved."""
    page = await open_terminal(chromium, demo)
    await page.keyboard.type("echo hello\n")
    await wait_for_screen(page, "^hello$")
    shots = OUTPUT / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / "demo-terminal.png"))
    assert (shots / "demo-terminal.png").stat().st_size > 1000


async def test_resize_changes_stty_size(chromium: Browser, demo: Demo) -> None:
    """Resizing the window changes what `stty size` reports in the shell."""
    page = await open_terminal(chromium, demo)
    await page.keyboard.type("stty size\n")
    rows, cols = await page.evaluate(
        "() => [window.terminalProxy.term.rows, window.terminalProxy.term.cols]"
    )
    await wait_for_screen(page, f"^{rows} {cols}$")
    await page.set_viewport_size({"width": 640, "height": 400})
    await page.wait_for_function(
        "([r, c]) => window.terminalProxy.term.cols !== c || window.terminalProxy.term.rows !== r",
        arg=[rows, cols],
    )
    new_rows, new_cols = await page.evaluate(
        "() => [window.terminalProxy.term.rows, window.terminalProxy.term.cols]"
    )
    assert (new_rows, new_cols) != (rows, cols)
    await page.keyboard.type("stty size\n")
    await wait_for_screen(page, f"^{new_rows} {new_cols}$")


async def test_exit_code_is_shown(chromium: Browser, demo: Demo) -> None:
    """`exit 3` ends the session and the page shows exit code 3."""
    page = await open_terminal(chromium, demo)
    await page.keyboard.type("exit 3\n")
    await page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('exit code 3')"
    )
    assert await page.evaluate("() => window.terminalProxy.lastExit.code") == 3


async def test_wrong_token_gets_the_error_page(chromium: Browser, demo: Demo) -> None:
    """A wrong or reused login token gets the error page, not a shell."""
    page = await chromium.new_page()
    response = await page.goto(demo.base + "/-/login?token=not-the-token")
    assert response is not None and response.status == 403
    assert await page.locator(".xterm").count() == 0
    assert "not valid" in await page.content()
    used = await chromium.new_page()
    await used.goto(demo.url)  # first use: fine
    again = await chromium.new_page()
    response = await again.goto(demo.url)  # second use of the one-time token
    assert response is not None and response.status == 403


async def test_copy_and_paste(chromium: Browser, demo: Demo) -> None:
    """Ctrl+Shift+C copies the terminal's selection; a paste becomes shell input."""
    context = await chromium.new_context(viewport={"width": 1000, "height": 600})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=demo.base)
    page = await context.new_page()
    await page.goto(demo.url)
    await page.wait_for_function("() => window.terminalProxy && window.terminalProxy.term")
    await wait_for_screen(page, r"^\$ ")
    await page.locator(".xterm-helper-textarea").focus()
    await page.keyboard.type("echo copy-$((6*7))-me\n")
    await wait_for_screen(page, "^copy-42-me$")
    # Select the output line (the line after the command) and copy it with Ctrl+Shift+C.
    await page.evaluate(
        """() => {
          const term = window.terminalProxy.term, buffer = term.buffer.active;
          for (let i = 0; i < buffer.length; i++) {
            if (buffer.getLine(i).translateToString(true) === "copy-42-me") {
              term.selectLines(i, i);
              return;
            }
          }
        }"""
    )
    await page.keyboard.press("Control+Shift+C")
    await page.wait_for_function(
        "async () => (await navigator.clipboard.readText()).trim() === 'copy-42-me'"
    )
    # Paste: the browser's paste event on xterm's textarea, as Ctrl+Shift+V raises it.
    await page.evaluate("() => navigator.clipboard.writeText('echo pasted-$((2+3))')")
    await page.evaluate(
        """async () => {
          const data = new DataTransfer();
          data.setData("text/plain", await navigator.clipboard.readText());
          const textarea = document.querySelector(".xterm-helper-textarea");
          textarea.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true}));
        }"""
    )
    # bash turns on bracketed paste: the pasted text is edited in, Enter runs it.
    await wait_for_screen(page, r"^\$ echo pasted-\$\(\(2\+3\)\)")
    await page.keyboard.press("Enter")
    await wait_for_screen(page, "^pasted-5$")
    await context.close()


async def test_reconnect_opens_a_fresh_shell(chromium: Browser, demo: Demo) -> None:
    """After the shell exits, the Reconnect button opens a new session in the same page."""
    page = await open_terminal(chromium, demo)
    await page.keyboard.type("exit 0\n")
    await page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('exit code 0')"
    )
    await page.click("#reconnect")
    await wait_for_screen(page, r"^\$ ")
    await page.locator(".xterm-helper-textarea").focus()
    await page.keyboard.type("echo again\n")
    await wait_for_screen(page, "^again$")


class DropProxy:
    """A TCP forwarder in front of the demo whose connections the test can kill (abort:
    no close frame, no FIN handshake), like a network drop between browser and gateway."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.transports: list[asyncio.WriteTransport] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DropProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        self.kill()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def kill(self) -> None:
        for transport in self.transports:
            transport.abort()
        self.transports.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.transports += [writer.transport, up_writer.transport]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.transport.abort()

        loop = asyncio.get_running_loop()
        for coro in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = loop.create_task(coro)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


async def test_page_survives_a_dropped_connection(chromium: Browser, demo: Demo) -> None:
    """The socket is killed under the page (no close frame); the page resumes the same
    session: a variable set before the drop is still set, and nothing is lost."""
    port = int(demo.base.rsplit(":", 1)[1])
    async with DropProxy(port) as proxy:
        page = await chromium.new_page(viewport={"width": 1000, "height": 600})
        await page.goto(demo.url.replace(f":{port}/", f":{proxy.port}/"))
        await page.wait_for_function("() => window.terminalProxy && window.terminalProxy.term")
        await wait_for_screen(page, r"^\$ ")
        assert await page.evaluate("() => window.terminalProxy.handle.protocol") == (
            "v1.terminal-proxy"
        )
        session_id = await page.evaluate("() => window.terminalProxy.handle.sessionId")
        assert session_id
        await page.locator(".xterm-helper-textarea").focus()
        await page.keyboard.type("KEPT=survivor-42; echo set-$KEPT\n")
        await wait_for_screen(page, "^set-survivor-42$")
        proxy.kill()
        await page.wait_for_function(
            "() => window.terminalProxy.handle.status.resumed === true", timeout=15_000
        )
        assert await page.evaluate("() => window.terminalProxy.handle.sessionId") == session_id
        await page.keyboard.type("echo value-$KEPT\n")
        await wait_for_screen(page, "^value-survivor-42$")
        text = await screen(page)
        # Nothing replayed twice, nothing lost: the screen is what one unbroken session shows.
        assert text.rstrip().startswith(
            "$ KEPT=survivor-42; echo set-$KEPT\nset-survivor-42\n"
            "$ echo value-$KEPT\nvalue-survivor-42"
        )
        await page.close()


async def test_recording_plays_in_the_page(chromium: Browser, demo: Demo) -> None:
    """The demo records its sessions: after one ends, /-/recordings/ lists it and the
    player page (asciinema-player) shows what the shell printed."""
    page = await open_terminal(chromium, demo)
    await page.keyboard.type("echo recorded-$((6*7))\n")
    await wait_for_screen(page, "^recorded-42$")
    await page.keyboard.type("exit 0\n")
    await page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('exit code 0')"
    )
    session_id = await page.evaluate("() => window.terminalProxy.handle.sessionId")
    await page.goto(f"{demo.base}/-/recordings/")
    link = page.locator(f"#recordings a[href='/-/recordings/{session_id}']")
    await link.click()
    await page.wait_for_function("() => window.recordingPlayer !== undefined")
    await page.wait_for_function(
        "() => document.querySelector('#player').innerText.includes('recorded-42')",
        timeout=15_000,
    )
    # Without the sign-in cookie there is nothing to see.
    anonymous = await chromium.new_page()
    response = await anonymous.goto(f"{demo.base}/-/recordings/{session_id}.cast")
    assert response is not None and response.status == 401
    await anonymous.close()


async def test_extend_button_extends_a_time_limited_session(chromium: Browser) -> None:
    """With --max-session-time the page is warned before the end; its Extend button asks
    for more time and the status line shows the gateway's answer."""
    async with start_demo("--max-session-time", "10s") as demo:
        page = await open_terminal(chromium, demo)
        extend = page.locator("#extend")
        await extend.wait_for(state="visible", timeout=15_000)  # warned 5 s before the end
        await extend.click()
        status = page.locator("#status")
        await page.wait_for_function(
            "() => document.getElementById('status').textContent.startsWith('extended: ')",
            timeout=15_000,
        )
        seconds = int((await status.text_content() or "").split()[-2])
        assert 10 <= seconds <= 15  # what was left (< 5 s) plus one extension of 10 s
        assert await extend.is_hidden()
        await page.locator(".xterm-helper-textarea").focus()
        await page.keyboard.type("echo still-$((40+2))\n")
        await wait_for_screen(page, "^still-42$")
        await page.close()


async def shell_pid(page: Page, tag: str) -> str:
    """The shell's $$, printed on a line ``<tag>-<pid>``."""
    await page.keyboard.type(f"echo {tag}-$$\n")
    await wait_for_screen(page, f"^{tag}-[0-9]+$")
    match = re.search(rf"^{tag}-([0-9]+)$", await screen(page), re.MULTILINE)
    assert match
    return match.group(1)


async def test_reload_resumes_the_same_shell(chromium: Browser, demo: Demo) -> None:
    """A reload resumes the same shell (same $$) with the earlier output replayed; the
    page's status shows no protocol names."""
    page = await open_terminal(chromium, demo)
    assert await page.locator("#status").text_content() == "connected"
    before = await shell_pid(page, "before")
    await page.reload()
    await page.wait_for_function(
        "() => window.terminalProxy && window.terminalProxy.handle.status.resumed === true",
        timeout=15_000,
    )
    await page.wait_for_selector(".xterm-helper-textarea")
    await page.locator(".xterm-helper-textarea").focus()
    after = await shell_pid(page, "after")
    assert after == before
    text = await screen(page)
    # The replay is exact: the first prompt and the earlier command come back once.
    assert text.startswith(f"$ echo before-$$\nbefore-{before}\n$ echo after-$$\nafter-{after}")
    await page.close()


async def test_closed_tab_comes_back_within_the_grace(chromium: Browser, demo: Demo) -> None:
    """A closed tab's session waits out the resume grace: a tab that brings back its
    sessionStorage (as the browser's "reopen closed tab" does) gets the same shell."""
    context = await chromium.new_context(viewport={"width": 1000, "height": 600})
    page = await context.new_page()
    await page.goto(demo.url)
    await page.wait_for_function("() => window.terminalProxy && window.terminalProxy.term")
    await wait_for_screen(page, r"^\$ ")
    await page.locator(".xterm-helper-textarea").focus()
    before = await shell_pid(page, "tab")
    kept = await page.evaluate("() => JSON.stringify(Object.entries(sessionStorage))")
    await page.close()
    reopened = await context.new_page()
    await reopened.add_init_script(f"for (const [k, v] of {kept}) sessionStorage.setItem(k, v);")
    await reopened.goto(demo.base + "/")
    await reopened.wait_for_function(
        "() => window.terminalProxy && window.terminalProxy.handle.status.resumed === true",
        timeout=15_000,
    )
    await reopened.locator(".xterm-helper-textarea").focus()
    assert await shell_pid(reopened, "back") == before
    await context.close()


async def test_restarted_demo_says_the_sign_in_is_gone(chromium: Browser) -> None:
    """After the demo restarts (its sign-ins lived in memory) the open page says the
    sign-in is gone and where a new link comes from, not a close code."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listen = f"127.0.0.1:{port}"
    async with start_demo("--listen", listen) as demo:
        page = await open_terminal(chromium, demo)
        demo.proc.terminate()
        await demo.proc.wait()
    async with start_demo("--listen", listen):
        await page.wait_for_function(
            "() => document.querySelector('#status').textContent.includes('sign-in')",
            timeout=30_000,
        )
        status = await page.locator("#status").text_content() or ""
        assert "terminal-proxy demo" in status and "login link" in status
        assert not re.search(r"\(\d{4}\)", status)
        await wait_for_screen(page, "sign-in is no longer valid")
        await page.close()


async def test_time_limit_counts_down_and_says_why_it_ended(chromium: Browser) -> None:
    """The expiry warning counts down in the status line, writes a line into the
    terminal, and the end reads "session time limit reached", not a close code."""
    async with start_demo("--max-session-time", "6s") as demo:
        page = await open_terminal(chromium, demo)
        first = await page.wait_for_function(
            """() => {
              const text = document.getElementById('status').textContent;
              const m = /^session ends in (\\d+) s$/.exec(text);
              return m && Number(m[1]);
            }""",
            timeout=15_000,
        )
        seconds = int(await first.json_value())
        await page.wait_for_function(
            """(first) => {
              const text = document.getElementById('status').textContent;
              const m = /^session ends in (\\d+) s$/.exec(text);
              return m && Number(m[1]) < first;
            }""",
            arg=seconds,
        )
        await wait_for_screen(page, r"\[this session ends in \d+ s \(time limit\)")
        await page.wait_for_function(
            "() => document.getElementById('status').textContent === 'session time limit reached'",
            timeout=15_000,
        )
        await wait_for_screen(page, r"^\[session time limit reached\]$")
        assert "4004" not in await screen(page)
        await page.close()


async def test_page_furniture(chromium: Browser, demo: Demo) -> None:
    """The page says how to copy and paste, links the recordings, and has an icon."""
    page = await open_terminal(chromium, demo)
    hint = await page.locator("#hint").text_content() or ""
    assert "Ctrl+Shift+C" in hint and "Ctrl+Shift+V" in hint
    assert await page.locator("#recordings-link").get_attribute("href") == "/-/recordings/"
    response = await page.request.get(demo.base + "/favicon.ico")
    assert response.status == 200
    await page.close()
