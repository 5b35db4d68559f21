"""Shared terminals against a real gateway (docs/sharing.md): joins, roles, invitations,
removal, the end of sharing, limits, and a slow viewer that never slows the owner.

The owner is a ``v1.terminal-proxy`` browser of the native contract (user alice); the
fake authorization API answers joins (requests with ``Terminal-Proxy-Join``) with
``join_role`` for ``join_user``. Participants are raw aiohttp sockets, so every JSON
message the gateway sends them is seen as sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer

from terminal_proxy.app import GATEWAY
from terminal_proxy.protocols import TERMINAL_PROXY, ShareRequest
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.fakes.kube_apiserver import ExecSession
from tests.support.termclient import Term, open_term, raw_handshake, wait_hello
from tests.test_production import use_native

WAIT = 10.0


@dataclass
class Peer:
    """A participant's socket: its JSON messages and output bytes as they came."""

    ws: aiohttp.ClientWebSocketResponse
    messages: list[dict[str, Any]] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    close: tuple[int | None, str] | None = None

    async def read_one(self) -> None:
        msg = await self.ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            self.messages.append(json.loads(msg.data))
        elif msg.type is aiohttp.WSMsgType.BINARY:
            self.output += msg.data
        else:
            self.close = (self.ws.close_code, str(msg.extra or ""))

    async def message(self, kind: str, after: int = 0) -> dict[str, Any]:
        """The first ``kind`` message from index ``after`` on."""
        async with asyncio.timeout(WAIT):
            while True:
                for doc in self.messages[after:]:
                    if doc["type"] == kind:
                        return doc
                assert self.close is None, f"closed {self.close} waiting for {kind}"
                await self.read_one()

    async def until_output(self, needle: bytes) -> None:
        async with asyncio.timeout(WAIT):
            while needle not in self.output:
                assert self.close is None, f"closed {self.close} waiting for {needle!r}"
                await self.read_one()

    async def closed(self) -> tuple[int | None, str]:
        async with asyncio.timeout(WAIT):
            while self.close is None:
                await self.read_one()
        return self.close

    async def send(self, doc: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(doc))


async def owner_term(
    browser: aiohttp.ClientSession, server: TestServer, kube: Kube
) -> tuple[Term, ExecSession]:
    term = await open_term(browser, str(server.make_url(ENV_PATH)), TERMINAL_PROXY)
    hello = await wait_hello(term)
    assert hello.session
    upstream = await kube.next_session()
    await term.send_stdin(b"echo owner-was-here\r")
    await term.read_until(b"\r\nowner-was-here\r\n")
    return term, upstream


async def join(
    browser: aiohttp.ClientSession, server: TestServer, session: str, query: str = ""
) -> Peer:
    url = str(server.make_url(ENV_PATH)) + f"?join={session}{query}"
    ws = await browser.ws_connect(url, protocols=[TERMINAL_PROXY])
    return Peer(ws)


def session_of(term: Term) -> str:
    assert term.hello is not None
    return term.hello.session


async def owner_control(term: Term, doc: dict[str, Any]) -> None:
    await term.ws.send_str(json.dumps(doc))


async def owner_message(term: Term, kind: str) -> dict[str, Any]:
    """The owner's next JSON message of ``kind`` (the Term client skips those it does not
    know, so this reads the socket itself)."""
    async with asyncio.timeout(WAIT):
        while True:
            msg = await term.ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                doc: dict[str, Any] = json.loads(msg.data)
                if doc["type"] == kind:
                    return doc
            elif msg.type is aiohttp.WSMsgType.BINARY:
                term.stdout += msg.data
            else:
                raise AssertionError(f"owner socket ended: {msg}")


@pytest.fixture
async def shared(auth_api: FakeAuthApi, make_gateway: GatewayFactory) -> TestServer:
    use_native(auth_api, "alice")
    auth_api.join_user = {"username": "bob"}
    return await make_gateway(authorization={"contract": "native"})


async def test_a_viewer_joins_sees_the_screen_and_cannot_type(
    shared: TestServer,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    term, upstream = await owner_term(browser, shared, kube)
    session = session_of(term)
    viewer = await join(browser, shared, session)
    hello = await viewer.message("hello")
    assert (hello["role"], hello["session"]) == ("viewer", session)
    assert hello["participant"].startswith("p-")
    screen = await viewer.message("screen")
    assert "owner-was-here" in screen["data"]
    assert (screen["cols"], screen["rows"]) == (80, 24)
    people = await viewer.message("participants")
    assert [(p["user"], p["role"]) for p in people["items"]] == [
        ("alice", "owner"),
        ("bob", "viewer"),
    ]
    # The owner hears of it too.
    seen = await owner_message(term, "participants")
    assert [p["role"] for p in seen["items"]] == ["owner", "viewer"]

    # The authorization API was asked about this join, header and JWT claim.
    asked = auth_api.requests[-1]
    assert json.loads(asked.headers["terminal-proxy-join"][0]) == {
        "session": session,
        "owner": "alice",
    }
    claims = jwt.decode(
        asked.headers["terminal-proxy-api-request"][0],
        secret,
        algorithms=["HS256"],
        options={"verify_iss": False},
    )
    assert claims["join"] == {"session": session, "owner": "alice"}

    # Viewer input never reaches the upstream; the viewer is told.
    await viewer.ws.send_bytes(b"rm -rf /\r")
    refused = await viewer.message("refused")
    assert refused == {
        "type": "refused",
        "request": "input",
        "reason": "read-only: you joined as a viewer",
    }
    await term.send_stdin(b"echo live\r")
    await viewer.until_output(b"\r\nlive\r\n")
    await upstream.wait_for_stdin(b"echo owner-was-here\recho live\r")
    assert b"rm -rf" not in upstream.stdin_data

    # The owner's resize reaches the viewer as the shared size.
    await term.resize(100, 30)
    size = await viewer.message("size", after=len(viewer.messages))
    assert (size["cols"], size["rows"]) == (100, 30)

    # The owner closes: the session ends for everyone, with its own close.
    await term.ws.close()
    assert (await viewer.closed())[0] == 1000


async def test_a_writer_types_into_the_owners_shell(
    shared: TestServer, auth_api: FakeAuthApi, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    auth_api.join_role = "writer"
    term, upstream = await owner_term(browser, shared, kube)
    writer = await join(browser, shared, session_of(term))
    assert (await writer.message("hello"))["role"] == "writer"
    await writer.message("screen")
    await writer.ws.send_bytes(b"echo from-writer\r")
    await term.read_until(b"\r\nfrom-writer\r\n")
    await writer.until_output(b"\r\nfrom-writer\r\n")
    await upstream.wait_for_stdin(b"echo owner-was-here\recho from-writer\r")
    # A writer cannot manage the sharing nor end the input.
    await writer.send({"type": "remove", "participant": "owner"})
    assert (await writer.message("refused"))["request"] == "remove"
    await term.ws.close()


async def test_joins_that_are_refused_before_the_upgrade(
    shared: TestServer,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
    make_gateway: GatewayFactory,
) -> None:
    term, _ = await owner_term(browser, shared, kube)
    session = session_of(term)
    url = str(shared.make_url(ENV_PATH))
    status, body, _ = await raw_handshake(
        browser, f"{url}?join=nope.0123", protocols=TERMINAL_PROXY
    )
    assert (status, body.partition("\n")[0]) == (404, "no such session to join")
    status, body, _ = await raw_handshake(browser, f"{url}?join={session}")
    assert status == 400 and "joining needs the v1.terminal-proxy subprotocol" in body
    auth_api.join_role = None
    status, body, _ = await raw_handshake(
        browser, f"{url}?join={session}", protocols=TERMINAL_PROXY
    )
    assert (status, body.partition("\n")[0]) == (
        403,
        "the authorization granted no role for this join",
    )
    auth_api.set_mode("deny")
    status, body, headers = await raw_handshake(
        browser, f"{url}?join={session}", protocols=TERMINAL_PROXY
    )
    assert (status, body, headers["X-Custom"]) == (
        403,
        "You are not allowed to open this terminal",
        "kept",
    )
    auth_api.set_mode("ok")
    await term.ws.close()


async def test_gitlab_contract_routes_refuse_joins(
    gateway: TestServer, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    term = await open_term(browser, str(gateway.make_url(ENV_PATH)), TERMINAL_PROXY)
    hello = await wait_hello(term)
    status, body, _ = await raw_handshake(
        browser,
        str(gateway.make_url(ENV_PATH)) + f"?join={hello.session}",
        protocols=TERMINAL_PROXY,
    )
    assert (status, body) == (403, "joining is not supported on GitLab-contract routes\n")
    await term.ws.close()


async def test_invitations_roles_removal_and_the_end_of_sharing(
    shared: TestServer, auth_api: FakeAuthApi, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    auth_api.join_role = None  # invitations need only a signed-in user
    term, upstream = await owner_term(browser, shared, kube)
    session = session_of(term)
    await owner_control(term, {"type": "invite", "role": "writer", "uses": 1})
    invitation = await owner_message(term, "invitation")
    assert invitation["role"] == "writer" and invitation["uses"] == 1
    assert 3590 < invitation["expires_in"] <= 3600 and len(invitation["token"]) >= 43
    query = f"&invitation={invitation['invitation']}"

    # A wrong token: 4009, and the invitation is still open.
    wrong = await join(browser, shared, session, query)
    await wrong.send({"type": "join", "token": "x" * 43})
    assert await wrong.closed() == (4009, "join refused: invalid token")

    writer = await join(browser, shared, session, query)
    await writer.send({"type": "join", "token": invitation["token"]})
    hello = await writer.message("hello")
    assert hello["role"] == "writer"
    await writer.message("screen")
    # Single use: used up now.
    status, body, _ = await raw_handshake(
        browser,
        str(shared.make_url(ENV_PATH)) + f"?join={session}{query}",
        protocols=TERMINAL_PROXY,
    )
    assert (status, body.partition("\n")[0]) == (410, "invitation used up")

    # The owner makes the writer a viewer: told, and its input refused from then on.
    await owner_control(
        term, {"type": "set_role", "participant": hello["participant"], "role": "viewer"}
    )
    assert (await writer.message("role"))["role"] == "viewer"
    await writer.ws.send_bytes(b"echo sneaky\r")
    await writer.message("refused")

    # Listing and revoking invitations.
    await owner_control(term, {"type": "invite", "role": "viewer", "uses": 0, "expires_in": 60})
    second = await owner_message(term, "invitation")
    await owner_control(term, {"type": "invitations"})
    listed = await owner_message(term, "invitations")
    assert [i["invitation"] for i in listed["items"]] == [second["invitation"]]
    await owner_control(term, {"type": "revoke", "invitation": second["invitation"]})
    assert (await owner_message(term, "invitations"))["items"] == []

    # Removed by the owner: 4012.
    await owner_control(term, {"type": "remove", "participant": hello["participant"]})
    assert await writer.closed() == (4012, "removed by the owner")

    # End of sharing: every participant 4013, invitations gone.
    auth_api.join_role = "viewer"
    viewer = await join(browser, shared, session)
    await viewer.message("screen")
    await owner_control(term, {"type": "invite", "role": "viewer"})
    third = await owner_message(term, "invitation")
    await owner_control(term, {"type": "end_sharing"})
    assert await viewer.closed() == (4013, "sharing ended by the owner")
    status, _, _ = await raw_handshake(
        browser,
        str(shared.make_url(ENV_PATH)) + f"?join={session}&invitation={third['invitation']}",
        protocols=TERMINAL_PROXY,
    )
    assert status == 404
    # The owner's shell never got the viewer-turned input.
    await term.send_stdin(b"echo still-mine\r")
    await term.read_until(b"\r\nstill-mine\r\n")
    assert b"sneaky" not in upstream.stdin_data
    await term.ws.close()


async def test_max_participants(
    auth_api: FakeAuthApi, make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    use_native(auth_api, "alice")
    server = await make_gateway(
        authorization={"contract": "native"}, limits={"max_participants": 1}
    )
    term, _ = await owner_term(browser, server, kube)
    first = await join(browser, server, session_of(term))
    await first.message("screen")
    status, body, headers = await raw_handshake(
        browser,
        str(server.make_url(ENV_PATH)) + f"?join={session_of(term)}",
        protocols=TERMINAL_PROXY,
    )
    assert status == 503 and "the most participants it allows (1)" in body
    assert "Retry-After" in headers
    # One leaves: room again.
    await first.ws.close()
    second = await join(browser, server, session_of(term))
    await second.message("screen")
    await term.ws.close()


def _stalled_viewer(server: TestServer, session: str) -> socket.socket:
    """A viewer that upgrades and then never reads: its TCP window fills up."""
    sock = socket.create_connection((server.host, server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall(
        (
            f"GET {ENV_PATH}?join={session} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {TERMINAL_PROXY}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def _echo_times(term: Term, label: str, count: int) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        await term.send_stdin(f"echo {label}-{i}\r".encode())
        await term.read_until(f"\r\n{label}-{i}\r\n".encode())
        times.append(time.perf_counter() - started)
    return times


async def test_a_slow_viewer_never_slows_the_owner(
    shared: TestServer,
    kube: Kube,
    browser: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A viewer that never reads, while the shell floods output: the owner's echo round
    trip stays what it is without the viewer, and the viewer is started over from a
    snapshot instead of being queued without bound."""
    caplog.set_level(logging.INFO, "terminal_proxy.session")
    term, upstream = await owner_term(browser, shared, kube)
    flood = b"x" * 65536

    async def flood_and_echo(label: str) -> list[float]:
        for _ in range(128):  # 8 MiB: more than the socket buffers of loopback hold
            await upstream.send(1, flood)
        return await _echo_times(term, label, 20)

    alone = await flood_and_echo("alone")
    stalled = await asyncio.to_thread(_stalled_viewer, shared, session_of(term))
    try:
        with_viewer = await flood_and_echo("viewer")
    finally:
        stalled.close()
    slow, fast = statistics.median(with_viewer), statistics.median(alone)
    assert slow < max(3 * fast, fast + 0.05), (fast, slow)
    # Its queue hit the bound: dropped, to start over from a snapshot.
    assert any("participant fell behind" in r.getMessage() for r in caplog.records)
    await term.ws.close()


def test_share_requests_are_checked_by_the_codec() -> None:
    from terminal_proxy.protocols import Opcode, ProtocolError, Role, codec_for

    codec = codec_for(TERMINAL_PROXY, Role.SERVER)

    def decode(doc: dict[str, Any]) -> object:
        return codec.decode(Opcode.TEXT, json.dumps(doc).encode())

    assert decode({"type": "invite", "role": "viewer"}) == (
        ShareRequest("invite", role="viewer", uses=1),
    )
    assert decode({"type": "size_control", "participant": None}) == (ShareRequest("size_control"),)
    for bad in (
        {"type": "invite", "role": "owner"},
        {"type": "invite", "role": "viewer", "uses": 2},
        {"type": "invite", "role": "viewer", "expires_in": 0},
        {"type": "set_role", "participant": "p-1", "role": "root"},
        {"type": "remove"},
        {"type": "join"},
    ):
        with pytest.raises(ProtocolError):
            decode(bad)


async def _resume_viewer(
    browser: aiohttp.ClientSession, server: TestServer, session: str, hello: dict[str, Any]
) -> Peer:
    url = str(server.make_url(ENV_PATH)) + f"?resume={session}&participant={hello['participant']}"
    ws = await browser.ws_connect(url, protocols=[TERMINAL_PROXY])
    peer = Peer(ws)
    await peer.send(
        {"type": "resume", "session": session, "token": hello["token"], "received": 0, "sent": 0}
    )
    return peer


async def test_a_participant_resumes_and_gets_a_fresh_screen(
    shared: TestServer, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    term, upstream = await owner_term(browser, shared, kube)
    session = session_of(term)
    viewer = await join(browser, shared, session)
    hello = await viewer.message("hello")
    assert hello["token"] and hello["resume_grace"] == 300
    await viewer.message("screen")
    connection = viewer.ws._conn
    assert connection is not None and connection.transport is not None
    connection.transport.abort()  # no close frame: detached, not gone
    await upstream.send(1, b"while-you-were-away\r\n")
    await term.read_until(b"while-you-were-away\r\n")

    # A wrong token: 4009, and the participant is still resumable.
    wrong = await _resume_viewer(browser, shared, session, hello | {"token": "x" * 43})
    assert (await wrong.closed())[0] == 4009
    back = await _resume_viewer(browser, shared, session, hello)
    again = await back.message("hello")
    assert (again["resumed"], again["role"], again["participant"]) == (
        True,
        "viewer",
        hello["participant"],
    )
    assert again["token"] != hello["token"]
    screen = await back.message("screen")
    assert "while-you-were-away" in screen["data"]
    await term.send_stdin(b"echo after-resume\r")
    await back.until_output(b"\r\nafter-resume\r\n")
    # The used token does not work twice.
    twice = await _resume_viewer(browser, shared, session, hello)
    assert (await twice.closed())[0] == 4009
    # A clean close: gone for good.
    await back.ws.close()
    people = await owner_message(term, "participants")
    while len(people["items"]) != 1:
        people = await owner_message(term, "participants")
    status, body, _ = await raw_handshake(
        browser,
        str(shared.make_url(ENV_PATH)) + f"?resume={session}&participant={hello['participant']}",
        protocols=TERMINAL_PROXY,
    )
    assert (status, body.partition("\n")[0]) == (404, "no such participant to resume")
    await term.ws.close()


async def test_the_recording_lists_the_participants(
    auth_api: FakeAuthApi,
    make_gateway: GatewayFactory,
    kube: Kube,
    browser: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    use_native(auth_api, "alice")
    auth_api.join_user = {"username": "bob"}
    server = await make_gateway(
        authorization={"contract": "native"},
        recording={"routes": ["environment"], "dir": str(tmp_path), "input": True},
    )
    term, _ = await owner_term(browser, server, kube)
    (relay,) = server.app[GATEWAY].registry.live
    auth_api.join_role = "writer"
    writer = await join(browser, server, session_of(term))
    hello = await writer.message("hello")
    await writer.message("screen")
    await writer.ws.send_bytes(b"echo typed-by-bob\r")
    await term.read_until(b"\r\ntyped-by-bob\r\n")
    await writer.ws.close()
    await term.ws.close()
    await asyncio.wait_for(asyncio.shield(relay.done), WAIT)
    (cast,) = tmp_path.glob("*.cast")
    meta = json.loads(cast.with_suffix(".json").read_text())
    (entry,) = meta["participants"]
    assert (entry["participant"], entry["user"], entry["role"]) == (
        hello["participant"],
        "bob",
        "writer",
    )
    assert entry["joined"] <= entry["left"]
    # The writer's input is recorded like the owner's.
    assert "typed-by-bob" in cast.read_text()
    assert "sharing started" in cast.read_text()


async def test_the_owners_resume_names_it_the_owner(
    shared: TestServer, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """The owner's hello says participant "owner"; the web client resumes with
    ``&participant=owner``: that is the owner's own resume, replay and all."""
    term, upstream = await owner_term(browser, shared, kube)
    assert term.hello is not None and term.hello.session
    session, token = term.hello.session, term.hello.token
    connection = term.ws._conn
    assert connection is not None and connection.transport is not None
    connection.transport.abort()
    await upstream.send(1, b"missed-while-away\r\n")
    url = str(shared.make_url(ENV_PATH)) + f"?resume={session}&participant=owner"
    back = Peer(await browser.ws_connect(url, protocols=[TERMINAL_PROXY]))
    await back.send(
        {
            "type": "resume",
            "session": session,
            "token": token,
            "received": term.offset,
            "sent": len(term.sent_input),
        }
    )
    hello = await back.message("hello")
    assert (hello["resumed"], hello["role"], hello["participant"]) == (True, "owner", "owner")
    await back.until_output(b"missed-while-away\r\n")
    await back.ws.close()


async def test_anonymous_viewers_only_where_the_route_allows(
    auth_api: FakeAuthApi,
    make_gateway: GatewayFactory,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """sharing.anonymous_viewers: a viewer invitation admits a joiner the authorization
    would refuse; a writer invitation still needs the authorization; other routes too."""
    use_native(auth_api, "alice")
    server = await make_gateway(
        authorization={"contract": "native"}, sharing={"anonymous_viewers": ["environment"]}
    )
    term, _ = await owner_term(browser, server, kube)
    session = session_of(term)
    await owner_control(term, {"type": "invite", "role": "viewer", "uses": 0})
    viewing = await owner_message(term, "invitation")
    await owner_control(term, {"type": "invite", "role": "writer", "uses": 0})
    writing = await owner_message(term, "invitation")
    auth_api.set_mode("deny")  # nobody is signed in
    asked = len(auth_api.requests)
    viewer = await join(browser, server, session, f"&invitation={viewing['invitation']}")
    await viewer.send({"type": "join", "token": viewing["token"]})
    hello = await viewer.message("hello")
    assert hello["role"] == "viewer"
    people = await viewer.message("participants")
    assert people["items"][1]["user"] == "anonymous (127.0.0.1)"
    assert len(auth_api.requests) == asked  # the API was not asked
    status, body, _ = await raw_handshake(
        browser,
        str(server.make_url(ENV_PATH)) + f"?join={session}&invitation={writing['invitation']}",
        protocols=TERMINAL_PROXY,
    )
    assert (status, body) == (403, "You are not allowed to open this terminal")
    auth_api.set_mode("ok")
    await viewer.ws.close()
    await term.ws.close()
