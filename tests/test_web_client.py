"""The web client's pure helpers (web/src/close-codes.js), run under Node.

Node is what builds the page (scripts/build-web), so it is here whenever the page is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from terminal_proxy.session.stop import CLOSE_CODES

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "web" / "src" / "close-codes.js"


def run_js(body: str) -> Any:
    """Run ``body`` (an async function body returning JSON-able data) with the module as ``m``."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (it builds the web page: scripts/build-web)")
    script = (
        f"const m = await import({json.dumps(MODULE.as_uri())});\n"
        f"const out = await (async () => {{ {body} }})();\n"
        "process.stdout.write(JSON.stringify(out));\n"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_close_text_covers_every_close_code() -> None:
    """CLOSE_TEXT has human text for every code the gateway sends (docs/close-codes.md)."""
    table = run_js("return m.CLOSE_TEXT;")
    sent = {str(code) for code, _text, _up in CLOSE_CODES.values()}
    assert sent - set(table) == set()
    assert all(text and "(" not in text for text in table.values())


def test_close_reasons_are_worded_for_people() -> None:
    texts = run_js(
        """return [
          m.describeClose({code: 4004, reason: "session time limit reached", opened: true}),
          m.describeClose({code: 1000, reason: "exit code 3", exitCode: 3, opened: true}),
          m.describeClose({code: 1014, reason: "upstream failed: pod gone", opened: true}),
          m.describeClose({code: 4008, reason: "no such session to resume", opened: true}),
          m.describeClose({code: 1006, reason: "", opened: false}),
          m.describeClose({code: 1000, reason: "closed by the page", opened: true, byPage: true}),
          m.describeClose({code: 4999, reason: "something new", opened: true}),
        ];"""
    )
    assert texts == [
        "session time limit reached",
        "session ended: exit code 3",
        "the terminal's backend failed: pod gone",
        "this session no longer exists",
        "could not connect (the gateway refused or is unreachable)",
        "session closed",
        "something new (4999)",
    ]


def test_countdown_format() -> None:
    assert run_js("return [58.2, 60, 245, 3723].map(m.formatSeconds);") == [
        "59 s",
        "1:00",
        "4:05",
        "1:02:03",
    ]


def test_backoff_is_jittered_exponential_and_capped() -> None:
    """Each wait lies in [half, all] of 0.5 s · 2^(attempt-1), capped at 10 s; two pages
    with different random draws do not retry in the same instant."""
    low, high, spread = run_js(
        """const attempts = [1, 2, 3, 4, 5, 6, 10, 50];
        return [
          attempts.map((a) => m.backoffDelay(a, () => 0)),
          attempts.map((a) => m.backoffDelay(a, () => 0.999999)),
          new Set(Array.from({length: 50}, () => Math.round(m.backoffDelay(4)))).size,
        ];"""
    )
    assert low == [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]
    assert [round(h) for h in high] == [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]
    assert spread > 10


def test_try_later_closes_set_the_wait() -> None:
    waits = run_js(
        """return [
          m.retryAfterMs("too many terminals are being opened at once; retry after 7 s"),
          m.retryAfterMs("busy, try again in 2.5s"),
          m.retryAfterMs("session ended"),
          [...m.TRY_LATER],
        ];"""
    )
    assert waits == [7000, 2500, None, [1013, 4003]]
