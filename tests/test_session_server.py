"""The session server end to end: a real TLS server on 127.0.0.1, real processes on PTYs.

The test plays the gateway with an aiohttp client and the project's codecs in the CLIENT
role (tests/support/termclient.py). Every wait is on an event (output seen, close frame, session
ended, pidfd readable); asyncio.timeout is only a safety net.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from terminal_proxy.protocols import Exit, Opcode, Output, Role, codec_for, status_json
from terminal_proxy.sessionserver import (
    Outcome,
    Phase,
    SessionLimitError,
    SessionServer,
    SessionState,
    Ticket,
)
from tests.conftest import ENV_PATH, UNIT, GatewayFactory
from tests.fakes.auth_api import FakeAuthApi
from tests.support.logcapture import remember_secret
from tests.support.termclient import Term, open_term, raw_handshake

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
V1 = "channel.k8s.io"
V1_BASE64 = "base64.channel.k8s.io"
WAIT = 10 * UNIT

MakeServer = Callable[..., Awaitable[SessionServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    servers: list[SessionServer] = []

    async def make(**kwargs: Any) -> SessionServer:
        kwargs.setdefault("command", ["sh"])
        kwargs.setdefault("kill_grace", 1.0)
        server = SessionServer(host="127.0.0.1", port=0, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.aclose()


@pytest.fixture
async def server(make_server: MakeServer) -> SessionServer:
    return await make_server()


def client_for(server: SessionServer) -> aiohttp.ClientSession:
    context = ssl.create_default_context(cadata=server.ca_pem)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


@pytest.fixture
async def client(server: SessionServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with client_for(server) as session:
        yield session


def new_ticket(server: SessionServer, command: list[str] | None = None) -> Ticket:
    ticket = server.new_session(command)
    remember_secret(ticket.authorization.split()[-1])
    return ticket


async def attach(
    client: aiohttp.ClientSession,
    server: SessionServer,
    command: list[str] | None = None,
    protocol: str = V5,
) -> tuple[Term, SessionState, Ticket]:
    """A new session with a terminal attached; checks the kubelet-style first frame."""
    ticket = new_ticket(server, command)
    state = server.sessions[ticket.id]
    ws = await client.ws_connect(
        ticket.url, protocols=[protocol], headers={"Authorization": ticket.authorization}
    )
    assert ws.protocol == protocol
    async with asyncio.timeout(WAIT):
        first = await ws.receive()
    if protocol in (V4_BASE64, V1_BASE64):
        assert (first.type, first.data) == (aiohttp.WSMsgType.TEXT, "1")
    else:
        assert (first.type, first.data) == (aiohttp.WSMsgType.BINARY, b"\x01")
    return Term(ws, protocol), state, ticket


async def finish(term: Term, state: SessionState) -> int | None:
    """Wait for the server's close and for the session to be over; the close code."""
    code, _ = await term.wait_closed(WAIT)
    async with asyncio.timeout(WAIT):
        await state.ended.wait()
    return code


async def handshake(
    client: aiohttp.ClientSession, ticket: Ticket, **kwargs: Any
) -> tuple[int, str]:
    kwargs.setdefault("protocols", V5)
    kwargs.setdefault("headers", {"Authorization": ticket.authorization})
    status, body, _ = await raw_handshake(
        client, ticket.url.replace("wss://", "https://"), **kwargs
    )
    return status, body


def assert_reaped(pid: int | None) -> None:
    """``pid`` was our child and has been waited for: no process, no zombie."""
    assert pid is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not Path(f"/proc/{pid}").exists()


async def wait_exited(pidfd: int) -> None:
    """Until the process behind ``pidfd`` has exited (readable pidfd)."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, wake)
    try:
        async with asyncio.timeout(WAIT):
            await gone
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


# --- the terminal ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V5, V4, V4_BASE64, V1, V1_BASE64])
async def test_echo_through_sh(
    server: SessionServer, client: aiohttp.ClientSession, protocol: str
) -> None:
    """Input reaches an interactive sh on a PTY and its output comes back, per subprotocol."""
    term, state, _ = await attach(client, server, ["sh"], protocol)
    await term.send_stdin(b"echo a''b\n")
    # The PTY echoes the typed line as is; only the command's output reads "ab".
    await term.read_until(b"ab\r\n")
    await term.send_stdin(b"exit 0\n")
    assert await finish(term, state) == 1000
    expected = [] if protocol in (V1, V1_BASE64) else [Exit(0, "", status_json(0, ""))]
    assert term.exits == expected
    assert (state.outcome, state.exit_code, state.subprotocol) == (Outcome.EXITED, 0, protocol)
    assert_reaped(state.pid)


async def test_resize_changes_stty_size(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """The size starts at 80x24 and a resize frame becomes the PTY's size."""
    term, state, _ = await attach(client, server, ["sh"])
    await term.send_stdin(b"stty size\n")
    await term.read_until(b"24 80\r\n")
    await term.resize(101, 33)
    await term.send_stdin(b"stty size\n")
    await term.read_until(b"33 101\r\n")
    assert state.resizes == [(101, 33)]
    await term.send_stdin(b"exit\n")
    assert await finish(term, state) == 1000


async def test_exit_code_in_v5_status(server: SessionServer, client: aiohttp.ClientSession) -> None:
    """``exit 3`` gives the NonZeroExitCode Status on stream 3, then close 1000."""
    term, state, _ = await attach(client, server, ["sh", "-c", "exit 3"])
    assert await finish(term, state) == 1000
    assert [(e.code, e.status) for e in term.exits] == [(3, status_json(3, ""))]
    assert (state.outcome, state.exit_code) == (Outcome.EXITED, 3)
    assert_reaped(state.pid)


async def test_exit_code_in_v1_text(server: SessionServer, client: aiohttp.ClientSession) -> None:
    """Under channel.k8s.io a failure is plain text on stream 3 naming the exit code."""
    term, state, _ = await attach(client, server, ["sh", "-c", "exit 3"], V1)
    assert await finish(term, state) == 1000
    assert [e.code for e in term.exits] == [3]


async def test_signal_death_is_128_plus_n(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """A process killed by SIGTERM reports exit code 143 and names the signal."""
    term, state, _ = await attach(client, server, ["sh", "-c", "kill -TERM $$"])
    assert await finish(term, state) == 1000
    assert [e.code for e in term.exits] == [143]
    assert "SIGTERM" in term.exits[0].message
    assert state.exit_code == 143


async def test_close_signal_sends_eot(server: SessionServer, client: aiohttp.ClientSession) -> None:
    """The v5 close signal becomes ^D on the PTY: cat reads EOF and exits 0."""
    term, state, _ = await attach(client, server, ["cat"])
    await term.send_stdin(b"hello\n")
    await term.read_until(b"hello\r\nhello\r\n")  # the PTY's echo, then cat's copy
    await term.close_stdin()
    assert await finish(term, state) == 1000
    assert [e.code for e in term.exits] == [0]
    assert state.stdin_closed
    assert_reaped(state.pid)


async def test_stderr_shows_in_output(server: SessionServer, client: aiohttp.ClientSession) -> None:
    """The PTY merges stderr into the terminal output (stream 1)."""
    term, state, _ = await attach(client, server, ["sh", "-c", "echo oops >&2; exit 1"])
    assert await finish(term, state) == 1000
    assert b"oops\r\n" in term.stdout
    assert term.stderr == b""
    assert [e.code for e in term.exits] == [1]


async def test_env_cwd_and_term(make_server: MakeServer, tmp_path: Path) -> None:
    """An explicit environment and working directory are used; TERM is xterm-256color."""
    server = await make_server(env={"GREETING": "hi", "PATH": os.environ["PATH"]}, cwd=tmp_path)
    async with client_for(server) as client:
        term, state, _ = await attach(client, server, ["sh", "-c", 'echo "$GREETING $TERM"; pwd'])
        assert await finish(term, state) == 1000
    assert b"hi xterm-256color\r\n" in term.stdout
    assert f"{tmp_path}\r\n".encode() in term.stdout


async def test_command_not_found(server: SessionServer, client: aiohttp.ClientSession) -> None:
    """A command that cannot start gives exit code 127 on stream 3, then close 1000."""
    term, state, _ = await attach(client, server, ["/nonexistent/command"])
    assert await finish(term, state) == 1000
    assert [e.code for e in term.exits] == [127]
    assert (state.outcome, state.pid) == (Outcome.SPAWN_FAILED, None)


async def test_large_output_arrives_before_status(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """All of a megabyte written just before exit arrives, and only then the status."""
    command = ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"]
    ticket = new_ticket(server, command)
    state = server.sessions[ticket.id]
    codec = codec_for(V5, Role.CLIENT)
    output = bytearray()
    exits: list[tuple[int, Exit]] = []
    async with (
        asyncio.timeout(WAIT),
        client.ws_connect(
            ticket.url, protocols=[V5], headers={"Authorization": ticket.authorization}
        ) as ws,
    ):
        async for msg in ws:
            assert msg.type is aiohttp.WSMsgType.BINARY
            for event in codec.decode(Opcode.BINARY, msg.data):
                if isinstance(event, Output):
                    output.extend(event.data)
                elif isinstance(event, Exit):
                    exits.append((len(output), event))
        await state.ended.wait()
    assert output == b"x" * 1_000_000
    assert [(at, e.code) for at, e in exits] == [(1_000_000, 0)]
    assert ws.close_code == 1000


# --- ending the process when the client goes ------------------------------------------


async def test_client_close_kills_process_group(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """A client close ends the whole process group, reaps the leader, and discards the URL."""
    command = ["sh", "-c", 'sleep 1000 & echo "bg=$!"; wait']
    term, state, ticket = await attach(client, server, command)
    match = re.search(rb"bg=(\d+)\r\n", await term.read_until(b"\r\n"))
    assert match, bytes(term.stdout)
    background = os.pidfd_open(int(match.group(1)))
    await term.ws.close(code=4000, message=b"bye")
    async with asyncio.timeout(WAIT):
        await state.ended.wait()
    assert state.outcome is Outcome.CLIENT_LEFT
    assert state.detail == "client closed (4000)"
    assert_reaped(state.pid)
    await wait_exited(background)
    assert await handshake(client, ticket) == (404, "Session not found\n")


async def test_dropped_connection_kills_process(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """A dropped TCP connection (no close frame) ends the process like a close does."""
    term, state, ticket = await attach(client, server, ["sh", "-c", "echo ready; exec sleep 1000"])
    await term.read_until(b"ready\r\n")
    connection = term.ws._conn
    assert connection is not None and connection.transport is not None
    connection.transport.abort()
    async with asyncio.timeout(WAIT):
        await state.ended.wait()
    assert state.outcome is Outcome.CLIENT_LEFT
    assert_reaped(state.pid)
    assert await handshake(client, ticket) == (404, "Session not found\n")


async def test_sighup_ignored_gets_sigkill(make_server: MakeServer) -> None:
    """A process group that ignores SIGHUP is killed with SIGKILL after kill_grace."""
    server = await make_server(kill_grace=0.2)
    async with client_for(server) as client:
        command = ["sh", "-c", "trap '' HUP; echo ready; sleep 1000"]
        term, state, _ = await attach(client, server, command)
        await term.read_until(b"ready\r\n")
        await term.ws.close()
        async with asyncio.timeout(WAIT):
            await state.ended.wait()
    assert state.exit_code == 128 + 9
    assert_reaped(state.pid)


async def test_leftovers_holding_the_terminal_are_killed(make_server: MakeServer) -> None:
    """After the leader exits, whatever still holds the PTY gets SIGKILL after kill_grace."""
    server = await make_server(kill_grace=0.2)
    command = ["sh", "-c", "trap '' HUP; sleep 1000 & echo \"bg=$!\"; exit 0"]
    async with client_for(server) as client:
        term, state, _ = await attach(client, server, command)
        match = re.search(rb"bg=(\d+)\r\n", await term.read_until(b"\r\n"))
        assert match, bytes(term.stdout)
        try:
            background: int | None = os.pidfd_open(int(match.group(1)))
        except ProcessLookupError:  # already gone: fine too
            background = None
        assert await finish(term, state) == 1000
    assert [e.code for e in term.exits] == [0]
    assert_reaped(state.pid)
    if background is not None:
        await wait_exited(background)


async def test_protocol_error_closes_1002(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """A malformed v5 close frame ends the session with 1002 and the process with it."""
    term, state, _ = await attach(client, server, ["cat"])
    await term.ws.send_bytes(b"\xff\x07")
    assert await finish(term, state) == 1002
    assert state.outcome is Outcome.PROTOCOL_ERROR
    assert_reaped(state.pid)


async def test_aclose_ends_attached_sessions(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """aclose() closes terminals with 1001, ends their processes and drops waiting URLs."""
    term, state, _ = await attach(client, server, ["cat"])
    waiting_ticket = new_ticket(server)
    waiting = server.sessions[waiting_ticket.id]
    closing = asyncio.create_task(server.aclose())
    assert await term.wait_closed(WAIT) == (1001, "server shutting down")
    async with asyncio.timeout(WAIT):
        await closing
    assert state.outcome is Outcome.SHUTDOWN
    assert waiting.phase is Phase.ENDED
    assert server.sessions == {}
    assert_reaped(state.pid)
    with pytest.raises(RuntimeError):
        server.new_session()


# --- refusals before the upgrade ------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "wrong"}],
    ids=["missing", "wrong-bearer", "wrong"],
)
async def test_401_without_the_right_authorization(
    server: SessionServer, client: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    """A missing or wrong Authorization header gets 401 and spawns nothing."""
    ticket = new_ticket(server, ["cat"])
    state = server.sessions[ticket.id]
    assert await handshake(client, ticket, headers=headers) == (401, "Unauthorized\n")
    assert (state.phase, state.pid) == (Phase.WAITING, None)


async def test_401_with_the_token_twice(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """Two Authorization headers are refused even if one of them is right."""
    ticket = new_ticket(server, ["cat"])
    url = ticket.url.replace("wss://", "https://")
    headers = [("Authorization", ticket.authorization), ("Authorization", ticket.authorization)]
    async with client.get(url, headers=headers) as response:
        assert response.status == 401


async def test_405_plain_get(server: SessionServer, client: aiohttp.ClientSession) -> None:
    """A request that is not a WebSocket upgrade gets 405."""
    ticket = new_ticket(server, ["cat"])
    url = ticket.url.replace("wss://", "https://")
    async with client.get(url, headers={"Authorization": ticket.authorization}) as response:
        assert response.status == 405
        assert await response.text() == "Request is not a web socket connection\n"
    assert server.sessions[ticket.id].phase is Phase.WAITING


async def test_403_unsupported_subprotocol(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """An offer with no supported subprotocol (or none at all) gets 403 naming ours."""
    ticket = new_ticket(server, ["cat"])
    for offer in ("terminal.gitlab.com", None):
        status, body = await handshake(client, ticket, protocols=offer)
        assert status == 403
        assert V5 in body and V1 in body
    assert server.sessions[ticket.id].pid is None


async def test_client_order_decides(server: SessionServer, client: aiohttp.ClientSession) -> None:
    """The first supported subprotocol in the client's list wins."""
    ticket = new_ticket(server, ["sh", "-c", "exit 0"])
    state = server.sessions[ticket.id]
    async with client.ws_connect(
        ticket.url, protocols=["x-unknown", V1, V5], headers={"Authorization": ticket.authorization}
    ) as ws:
        assert ws.protocol == V1
        async with asyncio.timeout(WAIT):
            async for _ in ws:  # until the server's close, which the client answers
                pass
            await state.ended.wait()
    assert state.subprotocol == V1


async def test_423_second_terminal(server: SessionServer, client: aiohttp.ClientSession) -> None:
    """A second terminal while one is attached gets 423; the first one carries on."""
    term, state, ticket = await attach(client, server, ["cat"])
    assert await handshake(client, ticket) == (423, "Terminal already connected\n")
    await term.send_stdin(b"still here\n")
    await term.read_until(b"still here\r\nstill here\r\n")
    await term.close_stdin()
    assert await finish(term, state) == 1000


async def test_404_unknown_and_after_end(
    server: SessionServer, client: aiohttp.ClientSession
) -> None:
    """An unknown id gets 404, and so does a session's URL once its terminal ended."""
    term, state, ticket = await attach(client, server, ["sh", "-c", "exit 0"])
    unknown = Ticket(id="x", url=ticket.url.replace(ticket.id, "x" * 43), authorization="Bearer x")
    assert await handshake(client, unknown) == (404, "Session not found\n")
    assert await finish(term, state) == 1000
    assert await handshake(client, ticket) == (404, "Session not found\n")


async def test_claim_timeout_discards_url(make_server: MakeServer) -> None:
    """A URL no terminal claims within claim_timeout is discarded (404)."""
    server = await make_server(claim_timeout=0.05)
    ticket = new_ticket(server, ["cat"])
    state = server.sessions[ticket.id]
    async with asyncio.timeout(WAIT):
        await state.ended.wait()
    assert (state.outcome, state.pid) == (Outcome.EXPIRED, None)
    async with client_for(server) as client:
        assert await handshake(client, ticket) == (404, "Session not found\n")


async def test_max_sessions(make_server: MakeServer) -> None:
    """new_session() refuses beyond max_sessions live sessions."""
    server = await make_server(max_sessions=2)
    new_ticket(server)
    new_ticket(server)
    with pytest.raises(SessionLimitError):
        server.new_session()


async def test_ticket_repr_hides_token(server: SessionServer) -> None:
    """A ticket's repr never shows the Authorization value."""
    ticket = new_ticket(server)
    assert ticket.authorization.startswith("Bearer ")
    assert ticket.authorization not in repr(ticket)
    assert ticket.url.startswith(f"wss://{server.host_port}/session/{ticket.id}/exec")
    assert server.url == f"https://{server.host_port}"


# --- TLS and resources ----------------------------------------------------------------


async def test_tls_needs_the_ca(server: SessionServer) -> None:
    """The certificate verifies against ca_pem (IP SAN 127.0.0.1) and not without it."""
    ticket = new_ticket(server, ["sh", "-c", "exit 0"])
    state = server.sessions[ticket.id]
    headers = {"Authorization": ticket.authorization}
    async with aiohttp.ClientSession() as untrusting:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await untrusting.ws_connect(ticket.url, protocols=[V5], headers=headers)
    assert (state.phase, state.pid) == (Phase.WAITING, None)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cadata=server.ca_pem)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as trusting,
        trusting.ws_connect(ticket.url, protocols=[V5], headers=headers) as ws,
    ):
        assert ws.protocol == V5
        async with asyncio.timeout(WAIT):
            async for _ in ws:
                pass
            await state.ended.wait()
    assert state.outcome is Outcome.EXITED


async def test_no_fds_leaked_after_20_sessions() -> None:
    """Twenty complete sessions leave no file descriptor behind."""
    before = sorted(os.listdir("/proc/self/fd"))
    server = SessionServer(["printf", "ok"], host="127.0.0.1", port=0)
    async with server, client_for(server) as client:
        for _ in range(20):
            term, state, _ = await attach(client, server)
            assert await finish(term, state) == 1000
            assert term.stdout == b"ok"
            assert_reaped(state.pid)
    after = sorted(os.listdir("/proc/self/fd"))
    assert after == before


async def test_without_pidfd(
    server: SessionServer, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pidfd_open is missing, exits are still seen and every process is reaped."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "pidfd_open not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    term, state, _ = await attach(client, server, ["sh", "-c", "exit 5"])
    assert await finish(term, state) == 1000
    assert [e.code for e in term.exits] == [5]
    assert_reaped(state.pid)
    term, state, _ = await attach(client, server, ["sh", "-c", "echo ready; exec sleep 1000"])
    await term.read_until(b"ready\r\n")
    await term.ws.close()
    async with asyncio.timeout(WAIT):
        await state.ended.wait()
    assert state.outcome is Outcome.CLIENT_LEFT
    assert_reaped(state.pid)


# --- through the gateway --------------------------------------------------------------


@pytest.mark.parametrize("browser_protocol", [V5, "terminal.gitlab.com"])
async def test_through_the_gateway(
    server: SessionServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    browser_protocol: str,
) -> None:
    """The gateway dials a ticket's URL with its Authorization and pins ca_pem as CAPem."""
    ticket = new_ticket(server, ["sh"])
    state = server.sessions[ticket.id]
    auth_api.channel = {
        "Subprotocols": ["channel.k8s.io"],
        "Url": ticket.url,
        "Header": {"Authorization": [ticket.authorization]},
        "CAPem": server.ca_pem,
    }
    gateway = await make_gateway(upstream={"allowed_hosts": [server.host_port]})
    term = await open_term(browser, str(gateway.make_url(ENV_PATH)), browser_protocol)
    if browser_protocol == V5:
        await term.resize(101, 33)
        await term.send_stdin(b"stty size\n")
        await term.read_until(b"33 101\r\n")
    await term.send_stdin(b"echo a''b; exit 3\n")
    await term.read_until(b"ab\r\n")
    assert await finish(term, state) == 1000
    assert term.close_reason == "exit code 3"
    assert state.subprotocol == V5  # the gateway offers v5 first for channel.k8s.io
    assert state.exit_code == 3
