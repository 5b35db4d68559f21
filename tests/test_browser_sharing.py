"""Shared terminals in real headless Chromium against a real `terminal-proxy demo`.

The owner shares through the page's Share panel; the others open the join link
(`<page>#join=<session>.<invitation>.<token>`) in browsers of their own, signed in as the
demo's user (the owner's sign-in cookie copied into a fresh browser context: the demo has
one user and one login link). Everything waits on what the pages show, never on sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.test_browser_demo import (
    CHROMIUM_FLAGS,
    Demo,
    chromium_path,
    screen,
    start_demo,
    wait_for_screen,
)

pytestmark = pytest.mark.browser


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


# The visible screen (the viewport's rows), one string per row, trailing blanks cut.
VISIBLE_JS = """() => {
  const term = window.terminalProxy.term;
  const buffer = term.buffer.active;
  const lines = [];
  for (let y = 0; y < term.rows; y++) {
    const line = buffer.getLine(buffer.viewportY + y);
    lines.push(line ? line.translateToString(true) : "");
  }
  return {lines, cols: term.cols, rows: term.rows, alt: buffer.type === "alternate",
          cursor: [buffer.cursorX, buffer.cursorY]};
}"""


async def owner_page(chromium: Browser, demo: Demo) -> tuple[BrowserContext, Page]:
    context = await chromium.new_context(viewport={"width": 1000, "height": 600})
    page = await context.new_page()
    await page.goto(demo.url)
    await wait_for_screen(page, r"^\$ ")
    try:
        await page.wait_for_function("() => window.terminalProxy.role", timeout=10_000)
    except PlaywrightTimeoutError:
        pytest.fail("the gateway's hello names no role: the server side of sharing is missing")
    assert await page.evaluate("() => window.terminalProxy.role") == "owner"
    await page.locator(".xterm-helper-textarea").focus()
    return context, page


async def share(owner: Page, role: str) -> str:
    """Create an invitation with the page's Share panel; the join link it shows."""
    if await owner.locator("#sharing").is_hidden():
        await owner.locator("#share").click()
    await owner.locator("#invite-role").select_option(role)
    before = await owner.evaluate("() => window.terminalProxy.lastInvitation?.link ?? null")
    await owner.locator("#invite").click()
    await owner.wait_for_function(
        "(before) => (window.terminalProxy.lastInvitation?.link ?? null) !== before", arg=before
    )
    link = str(await owner.locator("#invite-link").input_value())
    assert "#join=" in link and link.startswith(owner.url.split("#")[0])
    assert "?token=" not in link.split("#")[0]  # the token is in the fragment only
    await owner.locator(".xterm-helper-textarea").focus()
    return link


async def joiner_page(
    chromium: Browser, owner: BrowserContext, link: str, role: str, size: ViewportSize
) -> Page:
    """A second browser, signed in as the demo's user, opening the join link."""
    context = await chromium.new_context(viewport=size, storage_state=await owner.storage_state())
    page = await context.new_page()
    await page.goto(link)
    await page.wait_for_function(
        "(role) => window.terminalProxy && window.terminalProxy.role === role", arg=role
    )
    return page


async def wait_for_same_screen(owner: Page, joiner: Page) -> dict[str, object]:
    """Wait until the joiner's visible xterm.js screen (text, cursor, alternate screen,
    size) equals the owner's; return it. xterm.js parses a write in slices, so the text of
    a snapshot can be on screen before the cursor move that ends it: the whole state is
    compared, never the text alone."""
    for _ in range(100):
        theirs = await owner.evaluate(VISIBLE_JS)
        try:
            await joiner.wait_for_function(
                f"(want) => JSON.stringify(({VISIBLE_JS})()) === JSON.stringify(want)",
                arg=theirs,
                timeout=2_000,
            )
        except Exception:
            continue  # the owner's screen changed meanwhile (a clock, a cursor): compare again
        mine = await joiner.evaluate(VISIBLE_JS)
        if mine == await owner.evaluate(VISIBLE_JS):
            return dict(mine)
    pytest.fail(
        f"the joiner's screen never equalled the owner's:\n{await screen(joiner)}\n"
        f"---\n{await screen(owner)}"
    )


async def test_viewer_joins_vi_and_sees_the_owners_screen(
    chromium: Browser, demo: Demo, tmp_path: Path
) -> None:
    """The owner runs vi; a viewer joins through the Share link mid-session and its xterm.js
    screen equals the owner's (text, size, alternate screen, cursor), then follows it."""
    text = tmp_path / "shared.txt"
    text.write_text("".join(f"line {i} of the shared file, é 中文\n" for i in range(1, 80)))
    context, owner = await owner_page(chromium, demo)
    await owner.keyboard.type(f"vi -u NONE -N -c 'set number' {text}\n")
    await wait_for_screen(owner, r"^\s+1 line 1 of the shared file")
    await owner.keyboard.type("20jOtyped before the join")
    await owner.keyboard.press("Escape")
    await wait_for_screen(owner, r"typed before the join$")

    link = await share(owner, "viewer")
    viewer = await joiner_page(chromium, context, link, "viewer", {"width": 760, "height": 480})
    seen = await wait_for_same_screen(owner, viewer)
    owners = await owner.evaluate(VISIBLE_JS)
    assert seen["alt"] and owners["alt"]
    assert (seen["cols"], seen["rows"]) == (owners["cols"], owners["rows"])
    assert seen["cursor"] == owners["cursor"]
    assert await viewer.locator("#readonly").is_visible()
    assert await owner.locator("#readonly").is_hidden()

    # Live output after the snapshot: the viewer follows the owner's edits and vi's exit.
    await owner.keyboard.type("otyped after the join")
    await owner.keyboard.press("Escape")
    await wait_for_screen(viewer, r"typed after the join$")
    await owner.keyboard.type(":q!\n")
    await wait_for_screen(owner, r"^\$ $")
    after = await wait_for_same_screen(owner, viewer)
    assert not after["alt"]


async def test_pair_session_owner_writer_and_viewer(chromium: Browser, demo: Demo) -> None:
    """Owner and writer both type into the shell; the viewer sees both, cannot type, and
    shows the read-only mark; the owner's page lists all three."""
    context, owner = await owner_page(chromium, demo)
    writer = await joiner_page(
        chromium, context, await share(owner, "writer"), "writer", {"width": 900, "height": 560}
    )
    viewer = await joiner_page(
        chromium, context, await share(owner, "viewer"), "viewer", {"width": 700, "height": 420}
    )
    await owner.wait_for_function("() => window.terminalProxy.participants.length === 3")
    roles = sorted(await owner.evaluate("() => window.terminalProxy.participants.map(p => p.role)"))
    assert roles == ["owner", "viewer", "writer"]
    assert await owner.locator("#participants li").count() == 3
    assert await owner.locator("#participants button.remove").count() == 2

    await owner.keyboard.type("echo from-$((6*7))-owner\n")
    await wait_for_screen(writer, "^from-42-owner$")
    await writer.locator(".xterm-helper-textarea").focus()
    await writer.keyboard.type("echo from-$((6*9))-writer\n")
    for page in (owner, writer, viewer):
        await wait_for_screen(page, "^from-54-writer$")
        await wait_for_screen(page, "^from-42-owner$")

    assert await viewer.locator("#readonly").is_visible()
    assert await writer.locator("#readonly").is_hidden()
    await viewer.locator(".xterm-helper-textarea").focus()
    await viewer.keyboard.type("echo from-viewer-$((1+1))\n")
    # What the viewer typed would have reached the shell before this later line does.
    await owner.keyboard.type("echo after-$((2+3))\n")
    for page in (owner, writer, viewer):
        await wait_for_screen(page, "^after-5$")
        assert "from-viewer-2" not in await screen(page)
        assert "from-viewer" not in await screen(page)

    # The viewer's terminal has the owner's size, not its own window's.
    sizes = [
        await page.evaluate(
            "() => [window.terminalProxy.term.cols, window.terminalProxy.term.rows]"
        )
        for page in (owner, writer, viewer)
    ]
    assert sizes[0] == sizes[1] == sizes[2]

    # The owner removes the viewer: its page says so (4012).
    await owner.locator("#participants li:has(.role:text-matches('^viewer')) button.remove").click()
    await viewer.wait_for_function("() => window.terminalProxy.lastClose?.code === 4012")
    assert "removed by the owner" in str(await viewer.locator("#status").text_content())


# Every cell of the visible screen with its colours and attributes, the cursor and modes.
XTERM_STATE_JS = """() => {
  const term = window.terminalProxy.term;
  const buffer = term.buffer.active;
  const colour = (c, fg) => fg
    ? (c.isFgDefault() ? "d" : (c.isFgRGB() ? "rgb" : "p") + c.getFgColor())
    : (c.isBgDefault() ? "d" : (c.isBgRGB() ? "rgb" : "p") + c.getBgColor());
  const rows = [];
  for (let y = 0; y < term.rows; y++) {
    const line = buffer.getLine(buffer.viewportY + y);
    const cells = [];
    for (let x = 0; x < term.cols; x++) {
      const c = line.getCell(x);
      cells.push([c.getChars() || " ", c.getWidth(), colour(c, true), colour(c, false), c.isBold(),
                  c.isItalic(), c.isDim(), c.isUnderline(), c.isInverse(), c.isInvisible(),
                  c.isStrikethrough(), c.isBlink()].join("|"));
    }
    rows.push(cells);
  }
  const m = term.modes;
  return {rows, alt: buffer.type === "alternate", cursor: [buffer.cursorX, buffer.cursorY],
          modes: [m.applicationCursorKeysMode, m.applicationKeypadMode, m.bracketedPasteMode,
                  m.mouseTrackingMode, m.wraparoundMode, m.insertMode, m.originMode]};
}"""

WRITE_JS = """async ([cols, rows, data]) => {
  const term = window.terminalProxy.term;
  term.reset();
  term.resize(cols, rows);
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  await new Promise((resolve) => term.write(bytes, resolve));
}"""


@pytest.mark.parametrize("name", ["vi-80x24", "top-80x24", "synthetic"])
async def test_snapshot_in_xterm_js_equals_the_stream(
    chromium: Browser, demo: Demo, name: str
) -> None:
    """The ScreenModel's snapshot, written into a reset xterm.js, gives the same cells,
    colours, attributes, cursor, alternate screen and modes as the original byte stream."""
    import base64

    from terminal_proxy.screen import ScreenModel

    data_dir = Path(__file__).parent / "data" / "screen"
    if name == "synthetic":
        stream = (
            b"plain \x1b[1;31mbold red\x1b[0m \x1b[38;5;130m256\x1b[48;2;10;20;30mtrue\x1b[m "
            b"\x1b[2;3;4;7;9mattrs\x1b[m \xe4\xb8\xad\xe6\x96\x87 e\xcc\x81\r\n"
            b"\x1b[5;10r\x1b[10;1Hscrolled\n\n\x1b[r\x1b[?1h\x1b[?2004h\x1b=\x1b[?1000h\x1b[?1006h"
            b"\x1b[3;5H\x1b[1;33msaved\x1b7\x1b[m\x1b[?1049h\x1b[44m\x1b[2J\x1b[Hin alt\x1b[m"
            b"\x1b[12;40H\x1b[4h"
        )
        cols, rows = 80, 24
    else:
        stream = (data_dir / f"{name}.bin").read_bytes()
        cols, rows = 80, 24
    model = ScreenModel(cols, rows)
    model.feed(stream)
    snapshot = model.snapshot().encode()

    page = await (await chromium.new_context(viewport={"width": 1100, "height": 700})).new_page()
    await page.goto(demo.url)
    await page.wait_for_function("() => window.terminalProxy && window.terminalProxy.term")
    await page.evaluate("() => window.terminalProxy.handle.close()")
    await page.wait_for_function("() => window.terminalProxy.lastClose !== null")
    await page.evaluate(WRITE_JS, [cols, rows, base64.b64encode(stream).decode()])
    want = await page.evaluate(XTERM_STATE_JS)
    await page.evaluate(WRITE_JS, [cols, rows, base64.b64encode(snapshot).decode()])
    got = await page.evaluate(XTERM_STATE_JS)
    for y, (a, b) in enumerate(zip(want["rows"], got["rows"], strict=True)):
        differing = [(x, p, q) for x, (p, q) in enumerate(zip(a, b, strict=True)) if p != q]
        assert a == b, f"row {y}: {differing[:5]}"
    assert got["alt"] == want["alt"]
    assert got["cursor"] == want["cursor"]
    assert got["modes"] == want["modes"]
