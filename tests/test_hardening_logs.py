"""Issue 11, item 11: no request head in any log line, malformed requests logged as one
rate-limited INFO line, control characters escaped in both log formats.

The parser-error attacks run against a real gateway process and read its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from pathlib import Path

import pytest

from terminal_proxy.logs import JsonFormatter, TextFormatter
from tests.support.process import GatewayProcess, standalone_config

MALFORMED = "malformed request from"


async def _send(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _settled(gateway: GatewayProcess) -> None:
    """Every earlier request's log line is out: a last request whose refusal is always
    logged (absolute-form target) has been logged."""
    await _send(gateway.url, b"GET http://x/settled HTTP/1.1\r\nHost: x\r\n\r\n")
    await gateway.wait_for_line(lambda s: "request target must be a path" in s)


def _assert_clean(gateway: GatewayProcess, *secrets_: str) -> None:
    text = "\n".join(gateway.lines)
    for secret in secrets_:
        assert secret not in text
    assert "Traceback" not in text
    assert " ERROR " not in text


@pytest.mark.parametrize(
    "build",
    [
        # An over-long Cookie header (past the parser's 8190-byte field limit).
        lambda cookie: (
            b"GET /x HTTP/1.1\r\nHost: x\r\nCookie: _gitlab_session="
            + cookie
            + b"; pad="
            + b"p" * 9000
            + b"\r\n\r\n"
        ),
        # A request head with bare LF line ends.
        lambda cookie: b"GET /x HTTP/1.1\nHost: x\nCookie: _gitlab_session=" + cookie + b"\n\n",
        # A bad request line ahead of the cookie.
        lambda cookie: b"G\x01T /x HTTP/1.1\r\nCookie: _gitlab_session=" + cookie + b"\r\n\r\n",
    ],
    ids=["long-cookie", "bare-lf", "bad-method"],
)
async def test_parser_errors_never_log_the_request_head(tmp_path: Path, build: object) -> None:
    cookie = secrets.token_hex(16)
    assert callable(build)
    config = standalone_config(tmp_path)
    async with GatewayProcess(["serve", "--config", str(config)]) as gateway:
        answer = await _send(gateway.url, build(cookie.encode()))
        await _settled(gateway)
        # aiohttp answers a request it could not parse as HTTP/1.0.
        assert answer.startswith((b"HTTP/1.0 400 Bad Request\r\n", b"HTTP/1.1 400 Bad Request\r\n"))
        assert b"\r\n\r\n400 Bad Request: " in answer
        assert cookie.encode() not in answer
        assert any(MALFORMED in line and " INFO " in line for line in gateway.lines)
        _assert_clean(gateway, cookie)


async def test_malformed_request_flood_logs_a_few_lines_per_peer(tmp_path: Path) -> None:
    config = standalone_config(tmp_path)
    async with GatewayProcess(["serve", "--config", str(config)]) as gateway:
        for _ in range(40):
            answer = await _send(gateway.url, b"GET /x HTTP/1.1\nHost: x\n\n")
            assert answer.split(b" ", 2)[1] == b"400"
        await _settled(gateway)
        assert sum(MALFORMED in line for line in gateway.lines) == 3
        _assert_clean(gateway)


# The resume session id is the browser's; so is any header value we log.
EVIL = "abc\r\n2026-01-01 INFO forged line\x1b[31m\tred\x7f\u202e"


def _record() -> logging.LogRecord:
    record = logging.LogRecord(
        "terminal_proxy.resume", logging.INFO, __file__, 1, "resume of %s", (EVIL,), None
    )
    record.fields = {"session": EVIL, "user": "zoë"}
    return record


def test_text_format_escapes_control_characters() -> None:
    line = TextFormatter("%(levelname)s %(name)s: %(message)s").format(_record())
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\t" not in line and "\x7f" not in line and "\u202e" not in line
    assert "resume of abc\\x0d\\x0a2026-01-01 INFO forged line\\x1b[31m\\x09red" in line
    assert 'session="abc\\r\\n2026-01-01 INFO forged line\\u001b[31m\\tred\\u007f\\u202e"' in line


def test_json_format_escapes_control_characters() -> None:
    line = JsonFormatter().format(_record())
    assert line.isascii() and line.isprintable()
    doc = json.loads(line)
    assert doc["session"] == EVIL and doc["msg"] == f"resume of {EVIL}"
    assert doc["user"] == "zoë"
