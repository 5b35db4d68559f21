"""The authorization API's HTTP client (``httpclient.py``) against real servers on 127.0.0.1:
an aiohttp app for well-behaved answers, a raw asyncio server for the ones that are not."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from terminal_proxy import httpclient
from terminal_proxy.httpclient import OriginClient


@pytest.fixture
async def app_server() -> AsyncIterator[TestServer]:
    async def echo(request: web.Request) -> web.StreamResponse:
        # Which connection (the client's port) carried the request, and what it sent.
        assert request.transport is not None
        port = request.transport.get_extra_info("peername")[1]
        headers = {name: value for name, value in request.headers.items()}
        if request.path == "/chunked":
            response = web.StreamResponse(headers={"X-Port": str(port)})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"one ", b"two ", b"three"):
                await response.write(part)
            await response.write_eof()
            return response
        if request.path == "/close":
            return web.Response(text="bye", headers={"Connection": "close", "X-Port": str(port)})
        if request.path == "/big":
            return web.Response(body=b"x" * 5000, headers={"X-Port": str(port)})
        return web.json_response(
            {"port": port, "headers": headers, "target": request.raw_path},
            status=int(request.query.get("status", "200")),
            headers={"Set-Cookie": "session=api"},
        )

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def _client(server: TestServer) -> OriginClient:
    return OriginClient(URL(f"http://127.0.0.1:{server.port}"), max_idle=4)


async def _port(client: OriginClient, target: str = "/a") -> int:
    answer = await client.get(target, [], body_limit=1024)
    return int(answer.headers.get("X-Port") or json.loads(answer.body)["port"])


async def test_requests_reuse_one_kept_alive_connection(app_server: TestServer) -> None:
    client = _client(app_server)
    try:
        ports = {await _port(client) for _ in range(5)}
        assert len(ports) == 1
        # A chunked answer is decoded and leaves the connection reusable.
        answer = await client.get("/chunked", [], body_limit=1024)
        assert (answer.status, answer.body) == (200, b"one two three")
        assert int(answer.headers["X-Port"]) in ports
        assert await _port(client) in ports
    finally:
        await client.aclose()


async def test_headers_go_as_given_with_host_and_accept_unless_named(
    app_server: TestServer,
) -> None:
    client = _client(app_server)
    try:
        plain = await client.get(
            "/p%6fth?q=%2e", [("Cookie", "c=1"), ("X-A", "é")], body_limit=4096
        )
        doc = json.loads(plain.body)
        assert doc["target"] == "/p%6fth?q=%2e"  # exactly as given, never re-encoded
        assert doc["headers"]["Host"] == f"127.0.0.1:{app_server.port}"
        assert doc["headers"]["Accept"] == "*/*"
        assert doc["headers"]["Cookie"] == "c=1"
        named = await client.get(
            "/", [("Host", "gitlab.example.com"), ("Accept", "text/html")], body_limit=4096
        )
        doc = json.loads(named.body)
        assert doc["headers"]["Host"] == "gitlab.example.com"  # the browser's, as Workhorse
        assert doc["headers"]["Accept"] == "text/html"
        # The API's cookie is not kept for the next request (no jar).
        again = await client.get("/", [], body_limit=4096)
        assert "Cookie" not in json.loads(again.body)["headers"]
    finally:
        await client.aclose()


async def test_a_closing_answer_or_an_unread_body_is_not_reused(app_server: TestServer) -> None:
    client = _client(app_server)
    try:
        first = await _port(client, "/close")
        second = await _port(client)
        assert second != first  # Connection: close was honoured
        big = await client.get("/big", [], body_limit=100)
        assert len(big.body) == 101  # over the limit: what was read, one byte past it
        assert int(big.headers["X-Port"]) == second
        assert await _port(client) != second  # the rest was never read: not reused
    finally:
        await client.aclose()


async def test_idle_connections_are_dropped_after_the_keepalive(
    app_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(app_server)
    try:
        first = await _port(client)
        monkeypatch.setattr(httpclient, "KEEPALIVE", 0.0)
        assert await _port(client) != first
    finally:
        await client.aclose()


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _raw_server(serve: Serve) -> asyncio.Server:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        finally:
            writer.close()

    return await asyncio.start_server(closing, "127.0.0.1", 0)


async def test_a_connection_the_server_closed_while_idle_is_retried_once() -> None:
    """The server answers, keeps the connection, then closes it while idle: the next
    request is sent once more on a new connection instead of failing."""
    connections = 0
    closed_idle = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if connections == 1:
            writer.close()  # without Connection: close: the client kept it
            closed_idle.set()
            return
        await reader.read()

    server = await _raw_server(serve)
    port = server.sockets[0].getsockname()[1]
    client = OriginClient(URL(f"http://127.0.0.1:{port}"), max_idle=4)
    try:
        assert (await client.get("/", [], body_limit=10)).body == b"ok"
        await closed_idle.wait()
        assert (await client.get("/", [], body_limit=10)).body == b"ok"
        assert connections == 2
    finally:
        await client.aclose()
        server.close()


async def test_a_cancelled_request_does_not_leave_its_connection_for_the_next() -> None:
    """A request cancelled half-way (its timeout) must not hand its connection, with the
    late answer still to come, to the next request."""
    connections = 0
    received = asyncio.Event()
    answer_late = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        mine = connections
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            if mine == 1:
                received.set()
                await answer_late.wait()
            body = f"answer {mine}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    server = await _raw_server(serve)
    port = server.sockets[0].getsockname()[1]
    client = OriginClient(URL(f"http://127.0.0.1:{port}"), max_idle=4)
    try:
        request = asyncio.ensure_future(client.get("/", [], body_limit=100))
        await received.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        answer_late.set()
        assert (await client.get("/", [], body_limit=100)).body == b"answer 2"
    finally:
        await client.aclose()
        server.close()


async def test_a_refused_connection_raises_the_os_error() -> None:
    server = await _raw_server(lambda r, w: asyncio.sleep(0))
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = OriginClient(URL(f"http://127.0.0.1:{port}"), max_idle=4)
    with pytest.raises(ConnectionRefusedError):
        await client.get("/", [], body_limit=10)
    await client.aclose()


async def test_connections_have_tcp_nodelay(app_server: TestServer) -> None:
    """aiohttp's own per-connection TCP_NODELAY is skipped: the event loop sets it."""
    client = _client(app_server)
    try:
        await _port(client)
        ((protocol, _),) = client._idle
        assert protocol.transport is not None
        sock = protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await client.aclose()
