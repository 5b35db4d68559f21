"""Issue 11, item 10 (this part): odd requests get answers, not 500s and tracebacks.

Non-ASCII header bytes (a UTF-8 cookie set by another app on the domain) are forwarded
as sent and the terminal opens; an absolute-form target gets a clear 400; an invalid
Sec-WebSocket-Key is refused before the authorization API is asked; a response that
says ``Connection: close`` closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import ENV_PATH, Kube
from tests.fakes.auth_api import FakeAuthApi

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def _handshake(target: bytes = ENV_PATH.encode(), *, key: bytes = KEY, extra: bytes = b"") -> bytes:
    return (
        b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Protocol: terminal.gitlab.com\r\n"
        + extra
        + b"\r\n"
    )


async def _exchange(server: TestServer, request: bytes) -> tuple[bytes, bool]:
    """Send a raw request; return the response head (and body when it closes) and
    whether the gateway closed the connection after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if head.startswith(b"HTTP/1.1 101 "):
            return head, False
        async with asyncio.timeout(10):
            rest = await reader.read()  # returns only when the gateway closes
        return head + rest, True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.mark.parametrize(
    "header",
    [
        "X-Test: é".encode(),
        # Another app on the domain set a UTF-8 cookie next to the session cookie.
        "Cookie: theme=café; _gitlab_session=abc".encode(),
    ],
    ids=["utf8-header", "utf8-cookie"],
)
async def test_non_ascii_header_bytes_are_forwarded_and_the_terminal_opens(
    gateway: TestServer, auth_api: FakeAuthApi, kube: Kube, header: bytes
) -> None:
    head, _ = await _exchange(gateway, _handshake(extra=header + b"\r\n"))
    assert head.startswith(b"HTTP/1.1 101 "), head
    name, _, value = header.partition(b": ")
    seen = auth_api.requests[-1].headers[name.decode().lower()]
    # The fake decodes as aiohttp does (UTF-8, surrogateescape): the same bytes arrived.
    assert [v.encode("utf-8", "surrogateescape") for v in seen] == [value]
    await kube.next_session()


async def test_header_bytes_that_are_not_utf8_get_a_clear_400_before_authorization(
    gateway: TestServer, auth_api: FakeAuthApi
) -> None:
    """Such a value cannot reach the API unchanged (the HTTP client writes UTF-8): it is
    refused with the header's name, never forwarded altered, never a 500."""
    answer, closed = await _exchange(gateway, _handshake(extra=b"X-Latin1: caf\xe9\r\n"))
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert b"'X-Latin1' header holds bytes that are not UTF-8" in answer
    assert closed
    assert auth_api.requests == []


async def test_absolute_form_target_gets_a_clear_400(
    gateway: TestServer, auth_api: FakeAuthApi
) -> None:
    answer, closed = await _exchange(gateway, _handshake(b"http://evil.com" + ENV_PATH.encode()))
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"request target must be a path" in answer
    assert closed
    assert auth_api.requests == []


@pytest.mark.parametrize(
    "key",
    [b"short", b"!" * 24, b"A" * 27 + b"="],
    ids=["short", "not-base64", "20-bytes"],
)
async def test_invalid_websocket_key_is_refused_before_authorization(
    gateway: TestServer, auth_api: FakeAuthApi, kube: Kube, key: bytes
) -> None:
    answer, closed = await _exchange(gateway, _handshake(key=key))
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"invalid Sec-WebSocket-Key: it must be 16 bytes in base64" in answer
    assert closed
    assert auth_api.requests == []
    assert kube.sessions == []


async def test_connection_close_responses_close(gateway: TestServer) -> None:
    """A refusal says Connection: close and then closes (a keep-alive request)."""
    request = b"GET " + ENV_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer, closed = await _exchange(gateway, request)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nConnection: close\r\n" in answer
    assert closed
