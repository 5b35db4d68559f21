"""Protocol tests of the fake kube-apiserver, driven by an aiohttp client (no kubectl)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import WSMsgType

from tests.fakes.kube_apiserver import (
    ALL_SUBPROTOCOLS,
    BASE64_V1,
    V1,
    V4,
    V4_BASE64,
    V5,
    FakeContainer,
    FakeKubeApiServer,
    FakePod,
    blob_bytes,
    blob_sha256,
    negotiate_subprotocol,
    parse_bool_param,
    token_subprotocol,
)

TOKEN = "s3cret"
UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}
SUCCESS = {"metadata": {}, "status": "Success"}
TIMEOUT = 10.0


def exit_failure(code: int, message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {message}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApiServer]:
    async with FakeKubeApiServer(
        tokens={TOKEN: "alice"}, forbidden_tokens={"denied": "mallory"}
    ) as server:
        yield server


@pytest.fixture
async def http(kube: FakeKubeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=kube.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def connect(
    http: aiohttp.ClientSession,
    url: str,
    *,
    protocols: Sequence[str] = (V5,),
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> aiohttp.ClientWebSocketResponse:
    all_headers = (auth(token) if token is not None else {}) | (headers or {})
    ws: aiohttp.ClientWebSocketResponse = await http.ws_connect(
        url, protocols=protocols, headers=all_headers, **kwargs
    )
    return ws


def frame(stream: int, payload: bytes = b"") -> bytes:
    return bytes((stream,)) + payload


def b64frame(stream: int, payload: bytes = b"") -> str:
    return chr(ord("0") + stream) + base64.b64encode(payload).decode()


@dataclass
class Transcript:
    """Everything the server sent until the connection ended."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)
    opcodes: set[WSMsgType] = field(default_factory=set)
    # CLOSE when a close frame arrived; CLOSED/ERROR when the connection just ended.
    end: WSMsgType | None = None
    close_code: int | None = None

    def stream(self, stream: int) -> bytes:
        return b"".join(p for s, p in self.frames if s == stream)

    def status(self) -> Any:
        return json.loads(self.stream(3))


async def read_all(ws: aiohttp.ClientWebSocketResponse, *, b64: bool = False) -> Transcript:
    transcript = Transcript()
    async with asyncio.timeout(TIMEOUT):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.BINARY:
                transcript.frames.append((msg.data[0], msg.data[1:]))
            elif msg.type is WSMsgType.TEXT:
                stream = ord(msg.data[0]) - ord("0") if b64 else ord(msg.data[0])
                transcript.frames.append((stream, base64.b64decode(msg.data[1:])))
            else:
                transcript.end = msg.type
                if msg.type is WSMsgType.CLOSE:
                    transcript.close_code = msg.data
                return transcript
            transcript.opcodes.add(msg.type)


async def read_stdout_until(ws: aiohttp.ClientWebSocketResponse, expected: bytes) -> bytes:
    out = b""
    async with asyncio.timeout(TIMEOUT):
        while expected not in out:
            msg = await ws.receive()
            assert msg.type is WSMsgType.BINARY, msg
            if msg.data[0] == 1:
                out += msg.data[1:]
    return out


# ---- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], False),
        (["0"], False),
        (["false"], False),
        (["FALSE"], False),
        (["False"], False),
        (["true"], True),
        (["True"], True),
        (["1"], True),
        ([""], True),
        (["yes"], True),
        (["false", "true"], False),
    ],
)
def test_parse_bool_param_follows_apiserver_rules(values: list[str], expected: bool) -> None:
    """Query booleans: absent/0/false(any case) are false, anything else is true."""
    assert parse_bool_param(values) is expected


@pytest.mark.parametrize(
    ("offered", "translator", "expected"),
    [
        (None, True, ""),
        ("", True, ""),
        (V5, True, V5),
        (f"{V4}, {V5}", True, V5),
        (f"{V4}, {V5}", False, V4),
        (f"{V4},{V1}", True, V4),
        (f"{V1}, {V4}", True, V1),
        (f"{BASE64_V1}, {V4_BASE64}", True, BASE64_V1),
        ("foo, bar", True, None),
        ("foo, ", True, ""),
        ("v5.base64.channel.k8s.io", True, None),
    ],
)
def test_negotiate_subprotocol_table(
    offered: str | None, translator: bool, expected: str | None
) -> None:
    """Negotiation: v5 anywhere wins via the translator, else the client's order decides."""
    assert negotiate_subprotocol(offered, ALL_SUBPROTOCOLS, v5_translator=translator) == expected


def test_negotiate_without_v5_support_walks_client_list() -> None:
    """An apiserver without v5 serves the first supported protocol of the client's list."""
    supported = {V4, V1}
    assert negotiate_subprotocol(f"{V5}, {V4}", supported) == V4
    assert negotiate_subprotocol(V5, supported) is None


def test_token_subprotocol_is_base64url_without_padding() -> None:
    """The token subprotocol entry is the prefix plus unpadded base64url."""
    assert token_subprotocol("s3cret") == "base64url.bearer.authorization.k8s.io.czNjcmV0"
    assert "=" not in token_subprotocol("ab")
    assert token_subprotocol("\xff\xfe>?").endswith("w7_Dvj4_")


def test_blob_sha256_matches_blob_bytes() -> None:
    """blob_sha256 hashes exactly blob_bytes, across block boundaries."""
    n = (1 << 20) + 12345
    assert blob_sha256(n, 9) == hashlib.sha256(blob_bytes(n, 9)).hexdigest()


# ---- plain HTTP -----------------------------------------------------------------------------


async def test_discovery_endpoints_answer_kubectl_shapes(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """/api, /apis, /api/v1 and /version return the objects kubectl's discovery expects."""
    async with http.get(f"{kube.url}/api", headers=auth()) as r:
        api = await r.json()
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    async with http.get(f"{kube.url}/apis", headers=auth()) as r:
        assert (await r.json())["kind"] == "APIGroupList"
    async with http.get(f"{kube.url}/api/v1", headers=auth()) as r:
        resources = {res["name"]: res for res in (await r.json())["resources"]}
    for name in ("pods", "pods/exec", "pods/attach", "pods/log"):
        assert name in resources
    assert resources["pods/exec"]["kind"] == "PodExecOptions"
    async with http.get(f"{kube.url}/version", headers=auth()) as r:
        assert (await r.json())["gitVersion"] == "v1.36.3"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}],
    ids=["missing", "wrong", "not-bearer"],
)
async def test_bad_credentials_get_exact_401_status(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    """Missing or invalid credentials get 401 with the apiserver's Status body."""
    async with http.get(f"{kube.url}/api/v1/namespaces/default/pods/mypod", headers=headers) as r:
        assert r.status == 401
        assert r.content_type == "application/json"
        assert await r.json() == UNAUTHORIZED


async def test_version_is_public_only_without_credentials(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """/version answers anonymous requests, but a bad token is still 401."""
    async with http.get(f"{kube.url}/version") as r:
        assert r.status == 200
    async with http.get(f"{kube.url}/version", headers=auth("wrong")) as r:
        assert r.status == 401


async def test_unknown_path_is_404_status(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Unknown paths get the apiserver's 404 Status."""
    async with http.get(f"{kube.url}/apis/nope.example/v1", headers=auth()) as r:
        assert r.status == 404
        body = await r.json()
    assert body["reason"] == "NotFound"
    assert body["message"] == "the server could not find the requested resource"


async def test_pod_get_returns_running_pod(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """GET on a pod returns a Running Pod object listing its containers."""
    async with http.get(f"{kube.url}/api/v1/namespaces/default/pods/multi", headers=auth()) as r:
        assert r.status == 200
        pod = await r.json()
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "multi"
    assert pod["status"]["phase"] == "Running"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "sidecar"]


async def test_missing_pod_is_404_not_found(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """A missing pod is 404 NotFound naming it, for GET and for exec."""
    async with http.get(f"{kube.url}/api/v1/namespaces/default/pods/nope", headers=auth()) as r:
        assert r.status == 404
        body = await r.json()
    assert body["message"] == 'pods "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "pods"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await connect(http, kube.exec_url(pod="nope"))
    assert err.value.status == 404


async def test_non_upgrade_get_to_exec_is_400(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """A plain GET on pods/exec is 400 "Upgrade request required"."""
    url = kube.exec_url(scheme="https")
    async with http.get(url, headers=auth()) as r:
        assert r.status == 400
        body = await r.json()
    assert (body["reason"], body["message"]) == ("BadRequest", "Upgrade request required")


def spdy_headers(token: str = TOKEN) -> dict[str, str]:
    return {
        **auth(token),
        "Connection": "Upgrade",
        "Upgrade": "SPDY/3.1",
        "X-Stream-Protocol-Version": V5,
    }


@pytest.mark.parametrize(
    ("pod", "token", "status", "message"),
    [
        ("mypod", TOKEN, 400, "SPDY is not supported by this fake"),
        ("nope", TOKEN, 404, 'pods "nope" not found'),
        ("mypod", "wrong", 401, "Unauthorized"),
        (
            "mypod",
            "denied",
            403,
            'pods "mypod" is forbidden: User "mallory" cannot create resource "pods/exec"'
            ' in API group "" in the namespace "default"',
        ),
    ],
)
async def test_spdy_post_gets_the_pre_upgrade_answer(
    kube: FakeKubeApiServer,
    http: aiohttp.ClientSession,
    pod: str,
    token: str,
    status: int,
    message: str,
) -> None:
    """SPDY POSTs get the same error a WebSocket would, else "SPDY is not supported"."""
    url = kube.exec_url(pod=pod, scheme="https", command=["echo"])
    async with http.post(url, headers=spdy_headers(token)) as r:
        assert r.status == status
        assert (await r.json())["message"] == message


async def test_forbidden_token_gets_403_naming_user_and_subresource(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """An authenticated but unauthorised user gets 403 naming the user and pods/<sub>."""
    for url, sub in ((kube.exec_url(), "exec"), (kube.attach_url(), "attach")):
        async with http.get(
            url.replace("wss://", "https://"),
            headers={**auth("denied"), "Connection": "Upgrade", "Upgrade": "websocket"},
        ) as r:
            assert r.status == 403
            body = await r.json()
        assert body["reason"] == "Forbidden"
        assert body["message"] == (
            f'pods "mypod" is forbidden: User "mallory" cannot get resource "pods/{sub}"'
            ' in API group "" in the namespace "default"'
        )
        assert body["details"] == {"name": "mypod", "kind": "pods"}
    assert not kube.sessions


@pytest.mark.parametrize(
    ("pod", "container", "message"),
    [
        ("mypod", "bogus", "container bogus is not valid for pod mypod"),
        (
            "multi",
            None,
            "a container name must be specified for pod multi, choose one of: [app sidecar]",
        ),
    ],
)
async def test_container_errors_are_400(
    kube: FakeKubeApiServer,
    http: aiohttp.ClientSession,
    pod: str,
    container: str | None,
    message: str,
) -> None:
    """A bad or missing container is a 400 BadRequest Status before the upgrade."""
    url = kube.exec_url(pod=pod, container=container, scheme="https")
    async with http.get(url, headers=spdy_headers() | {"Upgrade": "websocket"}) as r:
        assert r.status == 400
        body = await r.json()
    assert (body["reason"], body["message"]) == ("BadRequest", message)


async def test_unscheduled_pod_is_400(kube: FakeKubeApiServer, http: aiohttp.ClientSession) -> None:
    """A pod without a node gets "does not have a host assigned"."""
    kube.add_pod(FakePod("pending", [FakeContainer("main")], phase="Pending", node_name=None))
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await connect(http, kube.exec_url(pod="pending"))
    assert err.value.status == 400
    async with http.get(
        kube.exec_url(pod="pending", scheme="https"),
        headers=spdy_headers() | {"Upgrade": "websocket"},
    ) as r:
        assert (await r.json())["message"] == "pod pending does not have a host assigned"


@pytest.mark.parametrize(
    ("stderr", "tty"), [(False, False), (True, True)], ids=["none", "tty-bypasses-stderr"]
)
async def test_no_streams_is_400_plain_text(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession, stderr: bool, tty: bool
) -> None:
    """Without stdin/stdout/stderr (stderr is bypassed under tty) the upgrade is refused."""
    url = kube.exec_url(
        command=["echo"], stdin=False, stdout=False, stderr=stderr, tty=tty, scheme="https"
    )
    async with http.get(url, headers=spdy_headers() | {"Upgrade": "websocket"}) as r:
        assert r.status == 400
        assert await r.text() == "you must specify at least 1 of stdin, stdout, stderr\n"


async def test_query_bools_use_apiserver_parsing(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """kubernetes_asyncio style True/False query values are parsed like the apiserver does."""
    path = "/api/v1/namespaces/default/pods/mypod/exec"
    query = "command=echo&command=hi&stdin=False&stdout=True&stderr=0&tty=FALSE&container=main"
    ws = await connect(http, f"wss://{kube.host_port}{path}?{query}")
    session = await kube.next_session()
    assert (session.stdin, session.stdout, session.stderr, session.tty) == (
        False,
        True,
        False,
        False,
    )
    assert session.command == ["echo", "hi"]
    transcript = await read_all(ws)
    assert transcript.stream(1) == b"hi\n"


async def test_no_subprotocol_overlap_is_403_with_empty_body(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """When no offered subprotocol is supported the handshake fails with an empty 403."""
    headers = spdy_headers() | {"Upgrade": "websocket", "Sec-WebSocket-Protocol": "foo, bar"}
    async with http.get(kube.exec_url(scheme="https"), headers=headers) as r:
        assert r.status == 403
        assert await r.read() == b""
    assert not kube.sessions


async def test_requests_are_recorded(kube: FakeKubeApiServer, http: aiohttp.ClientSession) -> None:
    """Every answered request is recorded with method, path, status and user."""
    async with http.get(f"{kube.url}/api/v1/namespaces/default/pods/mypod", headers=auth()):
        pass
    async with http.get(f"{kube.url}/api", headers=auth("wrong")):
        pass
    ws = await connect(http, kube.exec_url(command=["exit", "0"], tty=False))
    await read_all(ws)
    got = [(r.method, r.path, r.status, r.user, r.upgrade) for r in kube.requests]
    assert got == [
        ("GET", "/api/v1/namespaces/default/pods/mypod", 200, "alice", False),
        ("GET", "/api", 401, None, False),
        ("GET", "/api/v1/namespaces/default/pods/mypod/exec", 101, "alice", True),
    ]
    assert kube.requests_to("/api/v1/namespaces/default/pods/mypod/exec")[0].query.getall(
        "command"
    ) == ["exit", "0"]


# ---- WebSocket sessions ---------------------------------------------------------------------


async def test_v5_cat_echoes_stdin_and_ends_on_close_signal(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """v5: an empty stdout frame first, stdin echoed, [255,0] ends cat, Success, close 1000."""
    ws = await connect(
        http,
        kube.exec_url(command=["cat"], tty=False, stderr=True),
        headers={"X-Forwarded-For": "10.1.2.3"},
    )
    assert ws.protocol == V5
    session = await kube.next_session()
    await ws.send_bytes(frame(0, b"hello "))
    await ws.send_bytes(frame(0, b"world\n"))
    await session.wait_for_stdin(b"hello world\n")
    await ws.send_bytes(frame(255, b"\x00"))
    transcript = await read_all(ws)

    assert transcript.frames[0] == (1, b"")
    assert transcript.opcodes == {WSMsgType.BINARY}
    assert transcript.stream(1) == b"hello world\n"
    assert transcript.status() == SUCCESS
    assert (transcript.end, transcript.close_code) == (WSMsgType.CLOSE, 1000)

    await session.wait_closed()
    assert session.subprotocol == V5
    assert session.close_signal and session.close_signals == [0]
    assert session.stdin_chunks == [b"hello ", b"world\n"]
    assert session.stdin_bytes == 12
    assert session.stdin_sha256 == hashlib.sha256(b"hello world\n").hexdigest()
    assert (session.exit_code, session.end_reason) == (0, "exited")
    assert session.status == SUCCESS
    assert (session.kind, session.pod, session.container, session.user) == (
        "exec",
        "mypod",
        "main",
        "alice",
    )
    assert session.token_source == "header"
    assert session.headers["Authorization"] == f"Bearer {TOKEN}"
    assert session.headers["X-Forwarded-For"] == "10.1.2.3"
    assert session.query.getall("command") == ["cat"]
    assert session.path == "/api/v1/namespaces/default/pods/mypod/exec"


async def test_v5_nonzero_exit_sends_exact_failure_status(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """v5: stdout/stderr are separate streams and exit 3 gives the NonZeroExitCode Status."""
    url = kube.exec_url(
        command=["sh", "-c", "echo out; echoerr err; exit 3"], tty=False, stdin=False, stderr=True
    )
    transcript = await read_all(await connect(http, url))
    assert transcript.stream(1) == b"out\n"
    assert transcript.stream(2) == b"err\n"
    assert transcript.status() == exit_failure(3, "command terminated with exit code 3")
    assert transcript.close_code == 1000
    session = kube.sessions[0]
    assert session.exit_code == 3
    assert session.status == exit_failure(3, "command terminated with exit code 3")


async def test_v4_failure_names_the_command(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """v4: the NonZeroExitCode message carries the runtime's text with the argv."""
    url = kube.exec_url(command=["sh", "-c", "exit 7"], tty=False)
    transcript = await read_all(await connect(http, url, protocols=(V4,)))
    assert transcript.status() == exit_failure(
        7, "error executing command [sh -c exit 7], exit code 7"
    )


async def test_v4_ignores_close_signal_and_cat_ends_when_client_closes(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """v4: [255,0] is ignored; stdin only ends when the client closes the WebSocket."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False), protocols=(V4,))
    assert ws.protocol == V4
    session = await kube.next_session()
    await ws.send_bytes(frame(255, b"\x00"))
    await ws.send_bytes(frame(0, b"still here\n"))
    assert (await read_stdout_until(ws, b"still here\n")).endswith(b"still here\n")
    assert not session.close_signal
    assert session.protocol_errors == ["ignored frame on channel 255"]
    await ws.close(code=4000, message=b"bye")
    await session.wait_closed()
    assert (session.client_close_code, session.client_close_reason) == (4000, "bye")
    assert session.end_reason == "client-closed"
    assert session.exit_code is None


@pytest.mark.parametrize("payload", [b"", b"\x00\x00", b"\x09"], ids=["short", "long", "range"])
async def test_v5_malformed_close_signal_drops_connection(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession, payload: bytes
) -> None:
    """v5: a close signal of the wrong length or for a bad stream drops the connection."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False))
    session = await kube.next_session()
    await ws.send_bytes(frame(255, payload))
    transcript = await read_all(ws)
    assert transcript.end in (WSMsgType.CLOSED, WSMsgType.ERROR)
    assert transcript.stream(3) == b""
    await session.wait_closed()
    assert session.end_reason == "protocol-error"
    assert session.protocol_errors == [f"invalid close signal {payload!r}"]


async def test_v5_close_signal_for_other_streams_is_recorded(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """v5: [255, 4] is valid but does not end stdin."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False))
    session = await kube.next_session()
    await ws.send_bytes(frame(255, b"\x04"))
    await ws.send_bytes(frame(0, b"x\n"))
    await read_stdout_until(ws, b"x\n")
    assert session.close_signals == [4] and not session.close_signal
    await session.finish(0)


async def test_v4_base64_uses_text_frames(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """v4.base64: text frames with an ASCII stream digit and base64, status included."""
    url = kube.exec_url(command=["cat"], tty=False)
    ws = await connect(http, url, protocols=(V4_BASE64,))
    assert ws.protocol == V4_BASE64
    session = await kube.next_session()
    first = await ws.receive()
    assert (first.type, first.data) == (WSMsgType.TEXT, "1")
    await ws.send_str(b64frame(0, b"hi\n"))
    assert (await ws.receive()).data == b64frame(1, b"hi\n")
    await ws.send_str("0!!notbase64")
    await session.wait_until(lambda: bool(session.protocol_errors), "the bad frame")
    await session.finish(0)
    transcript = await read_all(ws, b64=True)
    assert transcript.opcodes == {WSMsgType.TEXT}
    assert transcript.status() == SUCCESS
    assert session.stdin_data == b"hi\n"
    assert len(session.protocol_errors) == 1


async def test_base64_v1_failure_is_plain_text(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """base64.channel.k8s.io: the failure text travels base64-encoded on stream 3."""
    url = kube.exec_url(command=["exit", "2"], tty=False)
    transcript = await read_all(await connect(http, url, protocols=(BASE64_V1,)), b64=True)
    assert transcript.stream(3) == (
        b"command terminated with non-zero exit code: error executing command [exit 2], exit code 2"
    )


async def test_v1_success_writes_no_status(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """channel.k8s.io: success writes nothing on stream 3 and closes with 1000."""
    url = kube.exec_url(command=["echo", "a", "b"], tty=False)
    ws = await connect(http, url, protocols=(V1,))
    assert ws.protocol == V1
    transcript = await read_all(ws)
    assert transcript.stream(1) == b"a b\n"
    assert 3 not in {s for s, _ in transcript.frames}
    assert transcript.close_code == 1000
    assert kube.sessions[0].status is None


async def test_no_subprotocol_header_means_v1_without_echo(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Without Sec-WebSocket-Protocol the session is binary v1 and nothing is echoed."""
    url = kube.exec_url(command=["sh", "-c", "exit 4"], tty=False)
    ws = await connect(http, url, protocols=())
    assert ws.protocol is None
    transcript = await read_all(ws)
    assert transcript.stream(3).endswith(b"exit code 4")
    session = kube.sessions[0]
    assert (session.subprotocol, session.offered_subprotocols) == ("", None)


@pytest.mark.parametrize(
    ("offered", "translator", "expected"),
    [((V4, V1), True, V4), ((V1, V4), True, V1), ((V4, V5), True, V5), ((V4, V5), False, V4)],
)
async def test_server_negotiates_in_client_order(
    offered: tuple[str, ...], translator: bool, expected: str
) -> None:
    """The server echoes the protocol negotiate_subprotocol picks from the client's list."""
    async with (
        FakeKubeApiServer(tls=False, v5_translator=translator) as kube,
        aiohttp.ClientSession() as http,
    ):
        ws = await connect(http, kube.exec_url(command=["echo"], tty=False), protocols=offered)
        assert ws.protocol == expected
        await read_all(ws)


async def test_token_subprotocol_authenticates_and_is_not_echoed(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """A valid token subprotocol authenticates and the echoed protocol is the real one."""
    url = kube.exec_url(command=["echo", "ok"], tty=False)
    ws = await connect(http, url, protocols=(token_subprotocol(TOKEN), V5), token=None)
    assert ws.protocol == V5
    transcript = await read_all(ws)
    assert transcript.stream(1) == b"ok\n"
    session = kube.sessions[0]
    assert (session.token_source, session.user) == ("subprotocol", "alice")
    assert "Authorization" not in session.headers


@pytest.mark.parametrize(
    "protocols",
    [
        (token_subprotocol(TOKEN),),
        (token_subprotocol(TOKEN), token_subprotocol(TOKEN), V5),
        (token_subprotocol("wrong"), V5),
        ("base64url.bearer.authorization.k8s.io.czNjcmV0==", V5),
        ("base64url.bearer.authorization.k8s.io.czNj*mV0", V5),
    ],
    ids=["alone", "twice", "wrong-token", "padded", "bad-alphabet"],
)
async def test_bad_token_subprotocol_is_401(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession, protocols: tuple[str, ...]
) -> None:
    """Token subprotocols: alone, repeated, wrong, or badly encoded → 401."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Protocol": ", ".join(protocols),
    }
    async with http.get(kube.exec_url(scheme="https"), headers=headers) as r:
        assert r.status == 401
        assert await r.json() == UNAUTHORIZED


async def test_token_subprotocol_only_counts_for_websockets(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """A token subprotocol on a non-WebSocket request does not authenticate."""
    headers = {"Sec-WebSocket-Protocol": f"{token_subprotocol(TOKEN)}, {V5}"}
    async with http.get(f"{kube.url}/api/v1/namespaces/default/pods/mypod", headers=headers) as r:
        assert r.status == 401


async def test_tty_merges_stderr_into_stdout(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """With tty, stderr is bypassed: its output arrives on stdout."""
    url = kube.exec_url(command=["sh", "-c", "echo o; echoerr e"], tty=True, stderr=True)
    transcript = await read_all(await connect(http, url))
    assert transcript.stream(1) == b"o\ne\n"
    assert transcript.stream(2) == b""
    assert kube.sessions[0].stderr is False


async def test_stderr_false_without_tty_discards_stderr(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Without tty and with stderr=false, stderr output is dropped."""
    url = kube.exec_url(command=["sh", "-c", "echo o; echoerr e"], tty=False, stderr=False)
    transcript = await read_all(await connect(http, url))
    assert (transcript.stream(1), transcript.stream(2)) == (b"o\n", b"")


async def test_first_frame_is_lowest_writable_stream(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Without stdout the initial empty frame goes to stderr."""
    url = kube.exec_url(command=["echoerr", "x"], tty=False, stdout=False, stderr=True)
    transcript = await read_all(await connect(http, url))
    assert transcript.frames[0] == (2, b"")
    assert transcript.stream(2) == b"x\n"


async def test_stty_size_follows_resizes(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Resize JSON (split across frames, trailing newline) sets what stty size prints."""
    ws = await connect(http, kube.exec_url(command=["sh"], tty=True))
    session = await kube.next_session()
    await ws.send_bytes(frame(0, b"stty size\r"))
    await read_stdout_until(ws, b"24 80\r\n")
    await ws.send_bytes(frame(4, b'{"Width":100,'))
    await ws.send_bytes(frame(4, b'"Height":30}\n{"width":120,"height":40}\n'))
    assert await session.wait_for_resize(120, 40)
    assert [(s.width, s.height) for s in session.resizes] == [(100, 30), (120, 40)]
    await ws.send_bytes(frame(0, b"stty size\r"))
    await read_stdout_until(ws, b"40 120\r\n")
    await ws.send_bytes(frame(0, b"exit\r"))
    assert (await read_all(ws)).status() == SUCCESS


async def test_invalid_resize_stops_resize_handling(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """A malformed resize is recorded and later resizes are ignored, like the kubelet."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=True))
    session = await kube.next_session()
    await ws.send_bytes(frame(4, b'{"Width":-1,"Height":2}'))
    await ws.send_bytes(frame(4, b'{"Width":1,"Height":2}'))
    await ws.send_bytes(frame(0, b"x"))
    await read_stdout_until(ws, b"x")
    assert session.resizes == []
    assert session.protocol_errors and "width" in session.protocol_errors[0]
    await session.finish(0)


async def test_eot_ends_cat_in_tty_mode(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Under tty a 0x04 byte ends stdin like a PTY's VEOF; cat exits 0."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=True))
    session = await kube.next_session()
    await ws.send_bytes(frame(0, b"abc\x04ignored"))
    transcript = await read_all(ws)
    assert transcript.stream(1) == b"abc"
    assert transcript.status() == SUCCESS
    assert session.eot
    assert session.stdin_data == b"abc\x04ignored"


async def test_eot_is_plain_data_without_tty(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Without tty, 0x04 is just a byte (recorded as EOT), passed to the process."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False))
    session = await kube.next_session()
    await ws.send_bytes(frame(0, b"a\x04b"))
    await session.wait_for_eot()
    await read_stdout_until(ws, b"a\x04b")
    await ws.send_bytes(frame(255, b"\x00"))
    assert (await read_all(ws)).status() == SUCCESS


async def test_interactive_tty_shell_echoes_and_prompts(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Interactive sh under tty echoes keystrokes, treats CR as Enter, prompts with "$ "."""
    ws = await connect(http, kube.exec_url(command=["sh"], tty=True))
    await ws.send_bytes(frame(0, b"echo hix\x7f\r"))
    await ws.send_bytes(frame(0, b"exit 4\r"))
    transcript = await read_all(ws)
    assert transcript.stream(1) == b"$ echo hix\b \b\r\nhi\r\n$ exit 4\r\n"
    assert transcript.status() == exit_failure(4, "command terminated with exit code 4")


async def test_attach_runs_the_main_process(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """attach talks to the container's main process (an interactive sh by default)."""
    ws = await connect(http, kube.attach_url(tty=False, stderr=True))
    session = await kube.next_session()
    assert (session.kind, session.command) == ("attach", ["sh"])
    await ws.send_bytes(frame(0, b"echo a\nechoerr b; nosuch\n"))
    await ws.send_bytes(frame(0, b"echo c"))
    await ws.send_bytes(frame(255, b"\x00"))
    transcript = await read_all(ws)
    assert transcript.stream(1) == b"a\nc\n"
    assert transcript.stream(2) == b"b\nsh: 1: nosuch: not found\n"
    assert transcript.status() == SUCCESS


async def test_attach_uses_the_configured_command(http: aiohttp.ClientSession) -> None:
    """A container's configured command is what attach runs."""
    pod = FakePod("app", [FakeContainer("main", command=["echo", "from", "pid1"])])
    async with FakeKubeApiServer(pods=[pod], tls=False) as kube:
        transcript = await read_all(await connect(http, kube.attach_url(pod="app", tty=False)))
    assert transcript.stream(1) == b"from pid1\n"


async def test_blob_sends_exact_bytes_in_chunks(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """blob N SEED CHUNK writes randbytes(N) of that seed in CHUNK-sized frames."""
    n, chunk = 100_003, 4096
    url = kube.exec_url(command=["blob", str(n), "42", str(chunk)], tty=False, stdin=False)
    transcript = await read_all(await connect(http, url))
    sizes = [len(p) for s, p in transcript.frames if s == 1][1:]
    assert sizes == [chunk] * (n // chunk) + [n % chunk]
    assert transcript.stream(1) == blob_bytes(n, 42)
    assert transcript.status() == SUCCESS
    assert kube.sessions[0].stdout_bytes == n


async def test_sink_hashes_stdin(kube: FakeKubeApiServer, http: aiohttp.ClientSession) -> None:
    """sink reads stdin to its end and prints its sha256 and length (6 MiB, past the pipe limit)."""
    ws = await connect(http, kube.exec_url(command=["sink"], tty=False))
    data = os.urandom(6 << 20)
    for i in range(0, len(data), 32 << 10):
        await ws.send_bytes(frame(0, data[i : i + (32 << 10)]))
    await ws.send_bytes(frame(255, b"\x00"))
    transcript = await read_all(ws)
    assert transcript.stream(1) == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode()
    session = kube.sessions[0]
    assert session.stdin_bytes == len(data)
    assert session.stdin_sha256 == hashlib.sha256(data).hexdigest()


async def test_record_limit_caps_kept_stdin(http: aiohttp.ClientSession) -> None:
    """Only record_limit stdin bytes are kept; count and hash still cover everything."""
    async with FakeKubeApiServer(tls=False, record_limit=4) as kube:
        ws = await connect(http, kube.exec_url(command=["sink"], tty=False))
        await ws.send_bytes(frame(0, b"abcdefgh"))
        await ws.send_bytes(frame(255, b"\x00"))
        await read_all(ws)
        session = kube.sessions[0]
    assert (session.stdin_data, session.stdin_chunks, session.stdin_bytes) == (
        b"abcd",
        [b"abcd"],
        8,
    )


@pytest.mark.parametrize(
    ("command", "code", "stderr"),
    [
        (["exit", "9"], 9, b""),
        (
            ["nosuch", "arg"],
            127,
            b'exec: "nosuch": executable file not found in $PATH: not found\n',
        ),
        (["sh", "-c", "nosuch"], 127, b"sh: 1: nosuch: not found\n"),
        (["sh", "-c", "exit 300"], 44, b""),
        (["blob", "x"], 2, b"usage: blob N SEED CHUNK (N >= 0, CHUNK > 0)\n"),
    ],
)
async def test_exit_codes(
    kube: FakeKubeApiServer,
    http: aiohttp.ClientSession,
    command: list[str],
    code: int,
    stderr: bytes,
) -> None:
    """Commands report their exit code in the NonZeroExitCode Status."""
    url = kube.exec_url(command=command, tty=False, stdin=False, stderr=True)
    transcript = await read_all(await connect(http, url))
    assert transcript.status()["details"]["causes"] == [
        {"reason": "ExitCode", "message": str(code)}
    ]
    assert transcript.stream(2) == stderr


async def test_finish_ends_session_from_server(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """session.finish(N) stops the process and reports exit N, then closes with 1000."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False))
    session = await kube.next_session()
    await session.finish(5)
    transcript = await read_all(ws)
    assert transcript.status() == exit_failure(5, "command terminated with exit code 5")
    assert (transcript.end, transcript.close_code) == (WSMsgType.CLOSE, 1000)
    assert (session.end_reason, session.exit_code) == ("finished", 5)


async def test_finish_with_error_and_close_code(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """finish(error=..., close_code=...) sends an InternalError Status and that close code."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False))
    session = await kube.next_session()
    await session.finish(error="kubelet unreachable", close_code=1011)
    transcript = await read_all(ws)
    assert transcript.status() == {
        "metadata": {},
        "status": "Failure",
        "message": "Internal error occurred: kubelet unreachable",
        "reason": "InternalError",
        "details": {"causes": [{"message": "kubelet unreachable"}]},
        "code": 500,
    }
    assert transcript.close_code == 1011


async def test_abort_drops_without_close_frame(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """session.abort() drops TCP: the client sees no status and no close frame."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False))
    session = await kube.next_session()
    session.abort()
    transcript = await read_all(ws)
    assert transcript.end in (WSMsgType.CLOSED, WSMsgType.ERROR)
    assert transcript.stream(3) == b""
    await session.wait_closed()
    assert session.end_reason == "aborted"


async def test_send_writes_frames_from_the_server(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """session.send(stream, data) injects output in the session's framing."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False), protocols=(V4_BASE64,))
    session = await kube.next_session()
    assert (await ws.receive()).data == "1"
    await session.send(2, b"warn")
    assert (await ws.receive()).data == b64frame(2, b"warn")
    await session.finish(0)


async def test_wait_for_stdin_fails_fast_when_session_closes(
    kube: FakeKubeApiServer, http: aiohttp.ClientSession
) -> None:
    """Waiting for stdin that never comes fails as soon as the session closes."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False))
    session = await kube.next_session()
    waiter = asyncio.get_running_loop().create_task(
        session.wait_for_stdin(b"never"), name="wait-for-never"
    )
    try:
        await ws.close()
        with pytest.raises(AssertionError, match="closed before stdin containing"):
            await waiter
    finally:
        waiter.cancel()
        await asyncio.wait({waiter})


async def test_server_answers_pings(kube: FakeKubeApiServer, http: aiohttp.ClientSession) -> None:
    """A client ping is answered with a pong carrying the same payload."""
    ws = await connect(http, kube.exec_url(command=["cat"], tty=False), autoping=False)
    assert (await ws.receive()).data == b"\x01"
    await ws.ping(b"are you there")
    msg = await ws.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")
    await kube.sessions[0].finish(0)


async def test_server_sends_pings_when_configured(http: aiohttp.ClientSession) -> None:
    """With ping_interval the server pings the client."""
    async with FakeKubeApiServer(tls=False, ping_interval=0.05) as kube:
        ws = await connect(http, kube.exec_url(command=["cat"], tty=False), autoping=False)
        assert (await ws.receive()).data == b"\x01"
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is WSMsgType.PING
        await ws.pong(msg.data)
        await kube.sessions[0].finish(0)


async def test_closing_the_server_drops_live_sessions(http: aiohttp.ClientSession) -> None:
    """Leaving the context drops sessions still running and marks them "shutdown"."""
    async with FakeKubeApiServer(tls=False) as kube:
        ws = await connect(http, kube.exec_url(command=["cat"], tty=False))
        session = await kube.next_session()
    assert session.closed.is_set()
    assert session.end_reason == "shutdown"
    assert (await read_all(ws)).end in (WSMsgType.CLOSED, WSMsgType.ERROR)


@pytest.mark.parametrize("cert", ["generated", "files"])
async def test_cli_prints_ready_and_serves(tmp_path: Path, cert: str) -> None:
    """python -m tests.fakes.kube_apiserver prints READY <url> and then serves requests."""
    ca_file = tmp_path / "ca.pem"
    args = ["--port", "0", "--token", "t0k=bob"]
    if cert == "files":
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(str(ca_file))
        issued.cert_chain_pems[0].write_to_path(str(tmp_path / "srv.pem"))
        issued.private_key_pem.write_to_path(str(tmp_path / "srv.key"))
        args += ["--tls-cert", str(tmp_path / "srv.pem"), "--tls-key", str(tmp_path / "srv.key")]
    else:
        args += ["--write-ca", str(ca_file)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.kube_apiserver",
        *args,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("READY https://127.0.0.1:")
        url = line.split()[1]
        ctx = ssl.create_default_context(cafile=str(ca_file))
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http,
            http.get(f"{url}/api/v1/namespaces/default/pods/mypod", headers=auth("t0k")) as r,
        ):
            assert r.status == 200
    finally:
        proc.terminate()
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
