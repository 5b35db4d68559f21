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
JOIN_LINK = ROOT / "web" / "src" / "join-link.js"


def run_js(body: str, module: Path = MODULE) -> Any:
    """Run ``body`` (an async function body returning JSON-able data) with the module as ``m``."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (it builds the web page: scripts/build-web)")
    script = (
        f"const m = await import({json.dumps(module.as_uri())});\n"
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


def test_sharing_close_codes_are_worded() -> None:
    said = run_js(
        "return [m.describeClose({code: 4012, reason: 'removed by the owner'}),"
        " m.describeClose({code: 4013, reason: 'sharing ended by the owner'}),"
        " m.describeClose({code: 4009, reason: 'join refused: invalid token'}),"
        " m.describeClose({code: 4009, reason: 'resume refused: invalid token'})];"
    )
    assert said == [
        "removed by the owner",
        "sharing ended by the owner",
        "join refused: the invitation link is not valid",
        "this terminal's resume token is no longer valid",
    ]


def test_join_link_round_trip() -> None:
    """The token travels in the fragment only; session ids with dots survive."""
    link, parsed, bad = run_js(
        "const link = m.joinLink('https://gw.example/demo/?x=1#old',"
        " {session: 'r1.s-abc', invitation: 'i-9', token: 'tok_-A'});"
        " return [link, m.parseJoinFragment(new URL(link).hash),"
        " ['', '#join=a.b', '#x=1'].map(m.parseJoinFragment)];",
        JOIN_LINK,
    )
    assert link == "https://gw.example/demo/?x=1#join=r1.s-abc.i-9.tok_-A"
    assert parsed == {"session": "r1.s-abc", "invitation": "i-9", "token": "tok_-A"}
    assert bad == [None, None, None]
