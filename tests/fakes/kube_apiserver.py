"""A protocol-faithful fake kube-apiserver for pods/exec and pods/attach over WebSocket.

It speaks the exec/attach protocol the way kubectl and kube-apiserver (with the kubelet behind
it) do: bearer-token authentication (header, or the ``base64url.bearer.authorization.k8s.io.``
subprotocol on WebSockets), enough discovery for kubectl, pods, the pre-upgrade errors with
their real Status bodies, subprotocol negotiation (v5/v4/v4.base64/v1/base64 v1), the channel
framing, the v5 close signal, resize, and the final status on stream 3 followed by a close
with code 1000.

Where the real server is strict, so is this one; where it is lenient, so is this one:

* a Sec-WebSocket-Protocol list containing v5 anywhere gets v5 (the apiserver's stream
  translator, ≥ 1.30); otherwise the client's list is walked in order. No match: empty 403.
* ``[255, id]`` under v5: id 0 ends stdin, ids 1-4 are recorded, any other shape drops the
  connection; under other protocols a 255 frame is an unknown channel and is ignored.
* no stdin/stdout/stderr (stderr does not count under tty) is the kubelet's plain-text 400.
* text or binary frames are accepted under every protocol (x/net/websocket reads both).

Behind the WebSocket runs a tiny "container": ``echo``, ``echoerr``, ``cat``, ``sh -c``, an
interactive ``sh``, ``blob`` (deterministic bulk output), ``sink`` (hashes stdin), ``exit``,
``stty size``, ``true``/``false``.

Every exec/attach session is recorded in an :class:`ExecSession` that tests synchronise on
(``await session.wait_for_stdin(b"x")``, ``await session.wait_closed()``), never on sleeps.
Every HTTP request is recorded in :attr:`FakeKubeApiServer.requests`.

In-process::

    async with FakeKubeApiServer(tokens=["s3cret"]) as kube:
        ...  # kube.url, kube.ca_pem, kube.exec_url(...), await kube.next_session()

As a process (prints ``READY https://127.0.0.1:PORT`` once listening)::

    python -m tests.fakes.kube_apiserver --port 0 --token s3cret [--tls-cert F --tls-key F]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import shlex
import signal
import ssl
import sys
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import urlencode

import trustme
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from .kube_cluster import FakeCluster

__all__ = [
    "ALL_SUBPROTOCOLS",
    "BASE64_V1",
    "DEFAULT_TOKEN",
    "STREAM_CLOSE",
    "STREAM_ERROR",
    "STREAM_RESIZE",
    "STREAM_STDERR",
    "STREAM_STDIN",
    "STREAM_STDOUT",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "V1",
    "V4",
    "V4_BASE64",
    "V5",
    "ExecSession",
    "FakeContainer",
    "FakeKubeApiServer",
    "FakePod",
    "RequestRecord",
    "TerminalSize",
    "blob_bytes",
    "blob_sha256",
    "default_pods",
    "negotiate_subprotocol",
    "parse_bool_param",
    "token_subprotocol",
]

logger = logging.getLogger(__name__)

# Subprotocol names (reference §2.1).
V5: Final = "v5.channel.k8s.io"
V4: Final = "v4.channel.k8s.io"
V4_BASE64: Final = "v4.base64.channel.k8s.io"
V1: Final = "channel.k8s.io"
BASE64_V1: Final = "base64.channel.k8s.io"
ALL_SUBPROTOCOLS: Final[tuple[str, ...]] = (V5, V4, V4_BASE64, V1, BASE64_V1)
TOKEN_SUBPROTOCOL_PREFIX: Final = "base64url.bearer.authorization.k8s.io."

# Stream ids (reference §2.4).
STREAM_STDIN: Final = 0
STREAM_STDOUT: Final = 1
STREAM_STDERR: Final = 2
STREAM_ERROR: Final = 3
STREAM_RESIZE: Final = 4
STREAM_CLOSE: Final = 255
# wsstream always creates these five channels; ids beyond are "not valid".
_CHANNEL_COUNT: Final = 5

DEFAULT_TOKEN: Final = "s3cret"
KUBE_VERSION: Final = "v1.36.3"
EOT: Final = 0x04

# The real server (golang.org/x/net/websocket) caps a message at 32 MiB.
_MAX_MESSAGE: Final = 32 << 20
# Unread stdin buffered per session before the reader stops reading the socket (TCP
# backpressure, like the io.Pipe behind the real channel).
_STDIN_PIPE_LIMIT: Final = 4 << 20
# blob generates in blocks whose size is a multiple of 4 so that the concatenation equals
# random.Random(seed).randbytes(n) (getrandbits fills 32-bit words).
_BLOB_BLOCK: Final = 1 << 20
_DEFAULT_WAIT: Final = 10.0
_CREATED: Final = "2026-01-01T00:00:00Z"

_SessionKind = Literal["exec", "attach"]
_StatusBody = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def parse_bool_param(values: Sequence[str]) -> bool:
    """Parse a query bool the apiserver way (``Convert_Slice_string_To_bool``).

    Absent → False; ``"0"`` or ``"false"`` in any case → False; anything else (even ``""``)
    → True. Only the first value counts.
    """
    if not values:
        return False
    return values[0].lower() not in ("0", "false")


def token_subprotocol(token: str) -> str:
    """The WebSocket subprotocol entry that carries ``token`` (base64url, no padding)."""
    encoded = base64.urlsafe_b64encode(token.encode()).rstrip(b"=").decode("ascii")
    return TOKEN_SUBPROTOCOL_PREFIX + encoded


def negotiate_subprotocol(
    offered: str | None,
    supported: Collection[str] = ALL_SUBPROTOCOLS,
    *,
    v5_translator: bool = True,
) -> str | None:
    """Pick the subprotocol as kube-apiserver (and behind it the kubelet) would.

    ``offered`` is the Sec-WebSocket-Protocol value (None: header absent). Returns the name to
    echo, ``""`` for binary v1 with nothing echoed, or None when nothing matches (→ HTTP 403).

    With ``v5_translator`` (apiserver ≥ 1.30) a list containing v5 anywhere is served by the
    stream translator, which accepts only v5. Otherwise the client's list is walked in order
    and the first supported name wins; an empty entry (or no header) means binary v1.
    """
    value = (offered or "").strip()
    protocols = [p.strip() for p in value.split(",")] if value else [""]
    if v5_translator and V5 in supported and V5 in protocols:
        return V5
    for protocol in protocols:
        if protocol == "" and V1 in supported:
            return ""
        if protocol and protocol in supported:
            return protocol
    return None


def blob_bytes(n: int, seed: int) -> bytes:
    """Exactly what ``blob n seed chunk`` writes to stdout."""
    return random.Random(seed).randbytes(n)


def blob_sha256(n: int, seed: int) -> str:
    """sha256 hex of ``blob_bytes(n, seed)``, computed without holding it all in memory."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    remaining = n
    while remaining:
        take = min(_BLOB_BLOCK, remaining)
        digest.update(rng.randbytes(take))
        remaining -= take
    return digest.hexdigest()


def _dumps(body: Mapping[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def _api_status(
    code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> _StatusBody:
    """A Status as the API serializer writes it (with kind/apiVersion; reference §2.6)."""
    body: _StatusBody = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = dict(details)
    body["code"] = code
    return body


def _status_response(
    code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> web.Response:
    return _json_response(_api_status(code, reason, message, details), status=code)


def _json_response(body: Mapping[str, Any], status: int = 200) -> web.Response:
    # The apiserver's JSON serializer uses json.Encoder: one value plus a newline.
    return web.Response(
        status=status, body=(_dumps(body) + "\n").encode(), content_type="application/json"
    )


def _exit_status(exit_code: int, message: str) -> _StatusBody:
    """Stream-3 Status for a non-zero exit (json.Marshal: no kind/apiVersion; §2.5)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {message}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


def _internal_error_status(error: str) -> _StatusBody:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {error}",
        "reason": "InternalError",
        "details": {"causes": [{"message": error}]},
        "code": 500,
    }


_SUCCESS_STATUS: Final[_StatusBody] = {"metadata": {}, "status": "Success"}


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TerminalSize:
    """One resize event (stream 4)."""

    width: int
    height: int


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the fake answered (recorded when its response started)."""

    method: str
    path: str
    query: MultiDictProxy[str]
    headers: CIMultiDictProxy[str]
    status: int
    # The authenticated user, None when authentication failed or was not needed.
    user: str | None
    # True for a WebSocket (or SPDY) upgrade request.
    upgrade: bool


@dataclass
class FakeContainer:
    """A container of a fake pod."""

    name: str
    image: str = "registry.example/fake/shell:1.0"
    # The container's main process: what ``attach`` talks to.
    command: list[str] = field(default_factory=lambda: ["sh"])
    stdin: bool = True
    tty: bool = False


@dataclass
class FakePod:
    """A pod the fake serves. ``node_name=None`` models an unscheduled pod."""

    name: str
    containers: list[FakeContainer]
    namespace: str = "default"
    phase: str = "Running"
    node_name: str | None = "fake-node"
    init_containers: list[FakeContainer] = field(default_factory=list)
    # Sets the kubectl.kubernetes.io/default-container annotation.
    default_container: str | None = None
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @classmethod
    def with_containers(cls, name: str, *containers: str, namespace: str = "default") -> FakePod:
        """A running pod with plain containers named ``containers``."""
        return cls(name, [FakeContainer(c) for c in containers], namespace=namespace)

    def container(self, name: str) -> FakeContainer | None:
        return next((c for c in self.containers if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """A realistic v1 Pod object."""
        annotations = (
            {"kubectl.kubernetes.io/default-container": self.default_container}
            if self.default_container
            else {}
        )
        spec: dict[str, Any] = {
            "containers": [_container_spec(c) for c in self.containers],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        }
        if self.init_containers:
            spec["initContainers"] = [_container_spec(c) for c in self.init_containers]
        status: dict[str, Any] = {"phase": self.phase, "qosClass": "BestEffort"}
        if self.node_name is not None:
            spec["nodeName"] = self.node_name
            running = self.phase == "Running"
            status.update(
                {
                    "conditions": [
                        {"type": t, "status": "True" if running else "False"}
                        for t in ("PodReadyToStartContainers", "Initialized", "Ready")
                    ]
                    + [{"type": "PodScheduled", "status": "True"}],
                    "hostIP": "10.0.0.10",
                    "hostIPs": [{"ip": "10.0.0.10"}],
                    "podIP": "10.244.0.17",
                    "podIPs": [{"ip": "10.244.0.17"}],
                    "startTime": _CREATED,
                    "containerStatuses": [
                        {
                            "name": c.name,
                            "state": {"running": {"startedAt": _CREATED}}
                            if running
                            else {"terminated": {"exitCode": 0, "reason": "Completed"}},
                            "lastState": {},
                            "ready": running,
                            "restartCount": 0,
                            "image": c.image,
                            "imageID": c.image + "@sha256:" + "0" * 64,
                            "containerID": "containerd://"
                            + hashlib.sha256(c.name.encode()).hexdigest(),
                            "started": running,
                        }
                        for c in self.containers
                    ],
                }
            )
        else:
            status["conditions"] = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
            ]
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": "1042",
                "creationTimestamp": _CREATED,
                "labels": {"app": self.name},
                "annotations": annotations,
            },
            "spec": spec,
            "status": status,
        }


def _container_spec(c: FakeContainer) -> dict[str, Any]:
    return {
        "name": c.name,
        "image": c.image,
        "command": list(c.command),
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
        "stdin": c.stdin,
        "tty": c.tty,
    }


def default_pods() -> list[FakePod]:
    """``default/mypod`` (container ``main``) and ``default/multi`` (``app``, ``sidecar``)."""
    return [
        FakePod.with_containers("mypod", "main"),
        FakePod.with_containers("multi", "app", "sidecar"),
    ]


@dataclass(frozen=True)
class _Wire:
    """Framing of one negotiated subprotocol."""

    # Negotiated name; "" when nothing was echoed (binary v1).
    name: str

    @property
    def base64(self) -> bool:
        return self.name in (V4_BASE64, BASE64_V1)

    @property
    def version(self) -> int:
        return {V5: 5, V4: 4, V4_BASE64: 4}.get(self.name, 1)

    async def send(self, ws: web.WebSocketResponse, stream: int, payload: bytes) -> None:
        if self.base64:
            await ws.send_str(chr(ord("0") + stream) + base64.b64encode(payload).decode("ascii"))
        else:
            await ws.send_bytes(bytes((stream,)) + payload)

    def decode(self, data: bytes) -> tuple[int, bytes]:
        """Split a non-empty client message into (channel, payload); ValueError if malformed."""
        channel = data[0]
        if not self.base64:
            return channel, data[1:]
        # wsstream subtracts '0' from the byte (uint8 arithmetic).
        try:
            payload = base64.b64decode(data[1:], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"invalid base64 payload: {exc}") from None
        return (channel - ord("0")) & 0xFF, payload


class _ResizeDecoder:
    """Streaming JSON decoder for stream 4, like Go's json.Decoder over the channel.

    Values may span frames and be separated by whitespace/newlines. A malformed value stops
    resize handling for the rest of the session (the kubelet's resize goroutine just exits).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.failed = False

    def feed(self, data: bytes) -> list[TerminalSize]:
        if self.failed:
            return []
        self._buf += data
        sizes: list[TerminalSize] = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf.clear()
                return sizes
            end = _json_object_end(text)
            if end is None:
                self._buf = bytearray(text)
                return sizes
            raw, self._buf = bytes(text[:end]), bytearray(text[end:])
            sizes.append(self._size(raw))

    def _size(self, raw: bytes) -> TerminalSize:
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            self.failed = True
            raise ValueError(f"resize: invalid JSON {raw!r}: {exc}") from None
        if not isinstance(obj, dict):
            self.failed = True
            raise ValueError(f"resize: not an object: {raw!r}")
        values = {k.lower(): v for k, v in obj.items()}
        out = []
        for key in ("width", "height"):
            value = values.get(key, 0)
            value = 0 if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
                self.failed = True
                raise ValueError(f"resize: {key} is not a uint16: {raw!r}")
            out.append(value)
        return TerminalSize(out[0], out[1])


def _json_object_end(text: bytes | bytearray) -> int | None:
    """Index just past the JSON object starting at text[0]; None if incomplete.

    Raises ValueError when ``text`` does not start with an object.
    """
    if text[:1] != b"{":
        raise ValueError(f"resize: expected a JSON object, got {bytes(text[:20])!r}")
    depth = 0
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:  # quote
                in_string = False
        elif ch == 0x22:
            in_string = True
        elif ch in (0x7B, 0x5B):  # { [
            depth += 1
        elif ch in (0x7D, 0x5D):  # } ]
            depth -= 1
            if depth == 0:
                return i + 1
    return None


# --------------------------------------------------------------------------------------------
# The session record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finish:
    exit_code: int = 0
    error: str | None = None
    close_code: int = 1000


class _OutputClosed(ConnectionError):
    """The WebSocket is gone; nothing more can be written to it."""


class ExecSession:
    """One exec/attach WebSocket session: what arrived, what was sent, and controls."""

    def __init__(
        self,
        *,
        id: int,
        kind: _SessionKind,
        namespace: str,
        pod: str,
        container: str,
        command: list[str],
        path: str,
        query: MultiDictProxy[str],
        headers: CIMultiDictProxy[str],
        user: str,
        token_source: Literal["header", "subprotocol"],
        offered_subprotocols: str | None,
        subprotocol: str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
        record_limit: int,
    ) -> None:
        # Sequence number, 1-based, in order of upgrade.
        self.id = id
        self.kind: _SessionKind = kind
        self.namespace = namespace
        self.pod = pod
        self.container = container
        # exec: the command= argv; attach: the container's main process.
        self.command = command
        # Request path, parsed query and headers exactly as received (before any filtering).
        self.path = path
        self.query = query
        self.headers = headers
        self.user = user
        # Where the accepted token came from.
        self.token_source: Literal["header", "subprotocol"] = token_source
        # The raw Sec-WebSocket-Protocol header (first line), None when absent.
        self.offered_subprotocols = offered_subprotocols
        # Negotiated subprotocol; "" when none was echoed (binary v1).
        self.subprotocol = subprotocol
        # Streams as the server opened them (stderr is False under tty: merged into stdout).
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.tty = tty
        # Payloads received on stream 0 in order (kept up to record_limit bytes in total).
        self.stdin_chunks: list[bytes] = []
        # Total bytes received on stream 0 (all of them, beyond record_limit too).
        self.stdin_bytes = 0
        # Resize events in order.
        self.resizes: list[TerminalSize] = []
        # Stream ids named by v5 close signals ([255, id]), in order.
        self.close_signals: list[int] = []
        # True once a 0x04 byte arrived on stream 0 (in any mode; it ends stdin only under tty).
        self.eot = False
        # Code of the client's close frame, whether it closed first or answered ours; the reason
        # only when the client closed first. None when no close frame came (dropped connection).
        self.client_close_code: int | None = None
        self.client_close_reason: str | None = None
        # What the fake reported on stream 3: exit code, and the Status (dict for v4/v5, str for
        # v1, None when nothing was written).
        self.exit_code: int | None = None
        self.status: _StatusBody | str | None = None
        # Bytes of process output sent on streams 1 and 2.
        self.stdout_bytes = 0
        self.stderr_bytes = 0
        # Protocol violations seen from the client (dropped or ignored frames).
        self.protocol_errors: list[str] = []
        # How the session ended: "exited", "finished", "client-closed", "connection-lost",
        # "protocol-error", "aborted", "shutdown"; None while running.
        self.end_reason: str | None = None
        # Set when the WebSocket is fully closed and the handler is done.
        self.closed = asyncio.Event()

        self._record_limit = record_limit
        self._stdin_data = bytearray()
        self._stdin_hash = hashlib.sha256()
        self._changed = asyncio.Event()
        self._finish: asyncio.Future[_Finish] = asyncio.get_running_loop().create_future()
        # Set once the session stops running (status written, or the connection gone).
        self._ending = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._ws: web.WebSocketResponse | None = None
        self._wire = _Wire(subprotocol)
        self._aborted = False

    def __repr__(self) -> str:
        return (
            f"<ExecSession #{self.id} {self.kind} {self.namespace}/{self.pod}/{self.container}"
            f" {self.command!r} proto={self.subprotocol!r} end={self.end_reason}>"
        )

    # ---- observations --------------------------------------------------------------------

    @property
    def stdin_data(self) -> bytes:
        """Stdin received so far (the first record_limit bytes)."""
        return bytes(self._stdin_data)

    @property
    def stdin_sha256(self) -> str:
        """sha256 hex of everything received on stream 0."""
        return self._stdin_hash.hexdigest()

    @property
    def close_signal(self) -> bool:
        """True once the v5 close signal for stdin ([255, 0]) arrived."""
        return STREAM_STDIN in self.close_signals

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        what: str | Callable[[], str],
        timeout: float = _DEFAULT_WAIT,
    ) -> None:
        """Wait until ``predicate()`` holds (re-checked on every recorded change).

        Raises AssertionError as soon as the session closes without it, TimeoutError after
        ``timeout``; ``what`` (or what it returns, at failure time) describes the condition.
        """

        def describe() -> str:
            return what() if callable(what) else what

        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    if self.closed.is_set():
                        raise AssertionError(f"{self!r} closed before {describe()}")
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"{self!r}: no {describe()} within {timeout}s") from None

    async def wait_for_stdin(self, expected: bytes, timeout: float = _DEFAULT_WAIT) -> None:
        """Wait until the stdin received so far contains ``expected``."""
        await self.wait_until(
            lambda: expected in self._stdin_data,
            lambda: f"stdin containing {expected!r} (got ...{bytes(self._stdin_data[-200:])!r})",
            timeout,
        )

    async def wait_for_stdin_bytes(self, count: int, timeout: float = _DEFAULT_WAIT) -> None:
        """Wait until at least ``count`` bytes arrived on stream 0."""
        await self.wait_until(lambda: self.stdin_bytes >= count, f"{count} stdin bytes", timeout)

    async def wait_for_resize(
        self, width: int | None = None, height: int | None = None, timeout: float = _DEFAULT_WAIT
    ) -> TerminalSize:
        """Wait for a resize matching the given width/height (any if None); return it."""

        def match() -> TerminalSize | None:
            for size in self.resizes:
                if (width is None or size.width == width) and (
                    height is None or size.height == height
                ):
                    return size
            return None

        await self.wait_until(lambda: match() is not None, f"resize {width}x{height}", timeout)
        size = match()
        assert size is not None
        return size

    async def wait_for_close_signal(self, timeout: float = _DEFAULT_WAIT) -> None:
        """Wait for the v5 stdin close signal [255, 0]."""
        await self.wait_until(lambda: self.close_signal, "the v5 close signal", timeout)

    async def wait_for_eot(self, timeout: float = _DEFAULT_WAIT) -> None:
        """Wait for a 0x04 byte on stdin."""
        await self.wait_until(lambda: self.eot, "EOT on stdin", timeout)

    async def wait_closed(self, timeout: float = _DEFAULT_WAIT) -> None:
        """Wait until the session is over and its WebSocket closed."""
        try:
            async with asyncio.timeout(timeout):
                await self.closed.wait()
        except TimeoutError:
            raise TimeoutError(f"{self!r} did not close within {timeout}s") from None

    # ---- controls --------------------------------------------------------------------------

    async def finish(
        self,
        exit_code: int = 0,
        *,
        error: str | None = None,
        close_code: int = 1000,
        timeout: float = _DEFAULT_WAIT,
    ) -> None:
        """End the session from the server side.

        The running process is stopped; the status for ``exit_code`` (or an InternalError
        carrying ``error``) goes out on stream 3, then a close frame with ``close_code``.
        Returns once the status is written and closing has begun (the close handshake needs
        the client to read); ``wait_closed()`` waits for the end.
        """
        if not self._finish.done():
            self._finish.set_result(_Finish(exit_code, error, close_code))
        try:
            async with asyncio.timeout(timeout):
                await self._ending.wait()
        except TimeoutError:
            raise TimeoutError(f"{self!r} did not finish within {timeout}s") from None

    def abort(self) -> None:
        """Drop the TCP connection at once: no status, no close frame."""
        self._aborted = True
        self._drop()

    async def send(self, stream: int, data: bytes) -> None:
        """Write a frame on ``stream`` now (framed for the negotiated subprotocol)."""
        if self._ws is None or self._ws.closed:
            raise _OutputClosed(f"{self!r} is closed")
        await self._wire.send(self._ws, stream, data)

    # ---- internals -------------------------------------------------------------------------

    def _protocol_error(self, message: str) -> None:
        self.protocol_errors.append(message)
        self._notify()

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _record_stdin(self, payload: bytes) -> None:
        self.stdin_bytes += len(payload)
        self._stdin_hash.update(payload)
        room = self._record_limit - len(self._stdin_data)
        if room > 0:
            kept = payload[:room]
            self.stdin_chunks.append(kept)
            self._stdin_data += kept
        if EOT in payload:
            self.eot = True
        self._notify()


# --------------------------------------------------------------------------------------------
# The "container": stdin pipe, process I/O, commands
# --------------------------------------------------------------------------------------------


class _Pipe:
    """Bounded byte pipe from the WebSocket reader to the process (stdin)."""

    def __init__(self, limit: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._eof = False
        self._reader_gone = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def write(self, data: bytes) -> None:
        while self._size >= self._limit and not self._reader_gone:
            self._writable.clear()
            await self._writable.wait()
        if self._eof or self._reader_gone or not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._readable.set()

    def close_write(self) -> None:
        self._eof = True
        self._readable.set()

    def close_read(self) -> None:
        self._reader_gone = True
        self._chunks.clear()
        self._size = 0
        self._writable.set()

    async def read(self) -> bytes:
        """Next chunk; b"" at end of input."""
        while not self._chunks:
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._size < self._limit:
            self._writable.set()
        return data


class ProcessIO:
    """What a fake command sees: stdin, stdout, stderr and the terminal size."""

    def __init__(self, session: ExecSession, stdin: _Pipe) -> None:
        self.session = session
        self.tty = session.tty
        self._stdin = stdin
        # Translate "\n" to "\r\n" on output (set by the interactive shell under a tty).
        self.onlcr = False

    async def read(self) -> bytes:
        """Next stdin chunk; b"" at end of input (always b"" when stdin was not requested)."""
        if not self.session.stdin:
            return b""
        return await self._stdin.read()

    async def write(self, data: bytes) -> None:
        """Write to stdout (dropped when stdout was not requested)."""
        await self._out(STREAM_STDOUT, data)

    async def write_err(self, data: bytes) -> None:
        """Write to stderr; under a tty stderr is the terminal, i.e. stdout."""
        await self._out(STREAM_STDOUT if self.tty else STREAM_STDERR, data)

    @property
    def size(self) -> TerminalSize:
        """The last resize, 80x24 before any."""
        return self.session.resizes[-1] if self.session.resizes else TerminalSize(80, 24)

    async def _out(self, stream: int, data: bytes) -> None:
        if not data:
            return
        if self.onlcr:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        wanted = self.session.stdout if stream == STREAM_STDOUT else self.session.stderr
        if not wanted:
            return
        await self.session.send(stream, data)  # ConnectionError when the client is gone
        if stream == STREAM_STDOUT:
            self.session.stdout_bytes += len(data)
        else:
            self.session.stderr_bytes += len(data)


class _ShellExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_Command = Callable[[ProcessIO, list[str]], Awaitable[int]]


async def _cmd_echo(io: ProcessIO, args: list[str]) -> int:
    await io.write((" ".join(args) + "\n").encode())
    return 0


async def _cmd_echoerr(io: ProcessIO, args: list[str]) -> int:
    await io.write_err((" ".join(args) + "\n").encode())
    return 0


async def _cmd_cat(io: ProcessIO, args: list[str]) -> int:
    while data := await io.read():
        await io.write(data)
    return 0


async def _cmd_sink(io: ProcessIO, args: list[str]) -> int:
    digest = hashlib.sha256()
    count = 0
    while data := await io.read():
        digest.update(data)
        count += len(data)
    await io.write(f"{digest.hexdigest()} {count}\n".encode())
    return 0


async def _cmd_blob(io: ProcessIO, args: list[str]) -> int:
    try:
        n, seed, chunk = (int(a) for a in args)
        if n < 0 or chunk <= 0:
            raise ValueError
    except ValueError:
        await io.write_err(b"usage: blob N SEED CHUNK (N >= 0, CHUNK > 0)\n")
        return 2
    rng = random.Random(seed)
    produced = 0
    carry = b""
    while produced < n:
        take = min(_BLOB_BLOCK, n - produced)
        block = carry + rng.randbytes(take)
        produced += take
        offset = 0
        while len(block) - offset >= chunk or (produced == n and offset < len(block)):
            await io.write(block[offset : offset + chunk])
            offset += chunk
        carry = block[offset:]
    return 0


async def _cmd_exit(io: ProcessIO, args: list[str]) -> int:
    try:
        return int(args[0]) & 0xFF if args else 0
    except ValueError:
        await io.write_err(f"exit: Illegal number: {args[0]}\n".encode())
        return 2


async def _cmd_stty(io: ProcessIO, args: list[str]) -> int:
    if args == ["size"]:
        size = io.size
        await io.write(f"{size.height} {size.width}\n".encode())
        return 0
    await io.write_err(b"stty: only 'stty size' is supported\n")
    return 1


async def _cmd_true(io: ProcessIO, args: list[str]) -> int:
    return 0


async def _cmd_false(io: ProcessIO, args: list[str]) -> int:
    return 1


async def _cmd_sh(io: ProcessIO, args: list[str]) -> int:
    if not args:
        return await _interactive_shell(io)
    if args[0] == "-c" and len(args) >= 2:
        try:
            return await _run_script(io, args[1])
        except _ShellExit as exc:
            return exc.code
    await io.write_err(b"sh: only 'sh' and 'sh -c SCRIPT' are supported\n")
    return 2


_COMMANDS: Final[dict[str, _Command]] = {
    "echo": _cmd_echo,
    "echoerr": _cmd_echoerr,
    "cat": _cmd_cat,
    "sink": _cmd_sink,
    "blob": _cmd_blob,
    "exit": _cmd_exit,
    "stty": _cmd_stty,
    "true": _cmd_true,
    "false": _cmd_false,
    "sh": _cmd_sh,
}


async def _run_script(io: ProcessIO, script: str) -> int:
    """Run ``;``/newline separated commands; raises _ShellExit on ``exit``."""
    status = 0
    for part in script.replace("\n", ";").split(";"):
        try:
            argv = shlex.split(part)
        except ValueError as exc:
            await io.write_err(f"sh: syntax error: {exc}\n".encode())
            status = 2
            continue
        if not argv:
            continue
        name, args = argv[0], argv[1:]
        if name == "exit":
            code = await _cmd_exit(io, args) if args else status
            raise _ShellExit(code)
        command = _COMMANDS.get(name)
        if command is None:
            await io.write_err(f"sh: 1: {name}: not found\n".encode())
            status = 127
        else:
            status = await command(io, args)
    return status


async def _interactive_shell(io: ProcessIO) -> int:
    """``sh`` reading commands from stdin; a terminal-ish line editor under a tty."""
    io.onlcr = io.tty
    prompt = b"$ " if io.tty else b""
    line = bytearray()
    await io.write(prompt)
    try:
        while data := await io.read():
            for byte in data:
                if byte == 0x0A or (io.tty and byte == 0x0D):
                    if io.tty:
                        await io.write(b"\n")
                    await _run_script(io, line.decode(errors="replace"))
                    line.clear()
                    await io.write(prompt)
                elif io.tty and byte in (0x7F, 0x08):
                    if line:
                        line.pop()
                        await io.write(b"\b \b")
                elif io.tty and byte == 0x03:
                    line.clear()
                    await io.write(b"^C\n" + prompt)
                else:
                    line.append(byte)
                    if io.tty:
                        await io.write(bytes((byte,)))
        if line.strip():
            await _run_script(io, line.decode(errors="replace"))
    except _ShellExit as exc:
        return exc.code
    return 0


async def _run_command(io: ProcessIO, argv: list[str]) -> int:
    command = _COMMANDS.get(argv[0]) if argv else None
    if command is None:
        name = argv[0] if argv else ""
        await io.write_err(
            f'exec: "{name}": executable file not found in $PATH: not found\n'.encode()
        )
        return 127
    return await command(io, argv[1:])


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:
    user: str
    source: Literal["header", "subprotocol"]
    # Authenticated, but RBAC denies pods/exec and pods/attach.
    forbidden: bool = False
    # Sec-WebSocket-Protocol after removing an accepted token entry (None: unchanged).
    filtered_protocols: str | None = None
    groups: tuple[str, ...] = ("system:authenticated",)


@dataclass(frozen=True)
class _StreamTarget:
    """A pods/exec or pods/attach request that passed the pre-upgrade checks."""

    container: str
    command: list[str]
    stdin: bool
    stdout: bool
    # False under tty (the kubelet bypasses stderr).
    stderr: bool
    tty: bool


_POD_PATH = "/api/v1/namespaces/{ns}/pods/{name}"
# The authenticated user of a request, for the request log.
_USER_KEY: Final = web.RequestKey("user", str)
_PUBLIC_PATHS: Final = frozenset({"/version", "/healthz", "/livez", "/readyz"})


def _tokens(value: Iterable[str] | Mapping[str, str], default_user: str) -> dict[str, str]:
    if isinstance(value, Mapping):
        return dict(value)
    return {token: default_user for token in value}


class FakeKubeApiServer:
    """The fake kube-apiserver. Use as ``async with FakeKubeApiServer(...) as kube:``."""

    def __init__(
        self,
        *,
        tokens: Iterable[str] | Mapping[str, str] = (DEFAULT_TOKEN,),
        forbidden_tokens: Iterable[str] | Mapping[str, str] = (),
        pods: Iterable[FakePod] | None = None,
        tls: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        subprotocols: Collection[str] = ALL_SUBPROTOCOLS,
        v5_translator: bool = True,
        ping_interval: float | None = None,
        record_limit: int = 16 << 20,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        tls_ca_file: str | Path | None = None,
        cluster: FakeCluster | None = None,
    ) -> None:
        """Configure; nothing listens until ``start()`` / ``async with``.

        tokens: valid bearer tokens (a mapping gives token → user name; otherwise the user is
            "fake-user"). forbidden_tokens: authenticate, but exec/attach answers 403 (user
            "forbidden-user" unless mapped). pods: defaults to :func:`default_pods`.
        subprotocols: the ones the server supports. v5_translator: a list containing v5
            anywhere gets v5 (apiserver ≥ 1.30); False walks the client's list only.
        ping_interval: send WebSocket pings this often (None: never; pings are always
            answered). record_limit: stdin bytes kept per session in ``stdin_chunks``.
        tls_cert_file/tls_key_file: serve this certificate instead of a trustme one; then
            ``ca_pem`` is tls_ca_file's content (or the certificate's, if self-signed).
        cluster: RBAC, impersonation, access reviews and objects (tests/fakes/kube_cluster.py);
            without it every exec is allowed to valid tokens and impersonation is refused.
        """
        # token -> (user, forbidden)
        self._users: dict[str, tuple[str, bool]] = {
            t: (u, False) for t, u in _tokens(tokens, "fake-user").items()
        }
        self._users.update(
            (t, (u, True)) for t, u in _tokens(forbidden_tokens, "forbidden-user").items()
        )
        self.cluster = cluster
        if cluster is not None:
            cluster.server = self
        self.pods: dict[tuple[str, str], FakePod] = {}
        for pod in default_pods() if pods is None else pods:
            self.add_pod(pod)
        self.tls = tls
        self.host = host
        self._port = port
        self.subprotocols = frozenset(subprotocols)
        self.v5_translator = v5_translator
        self.ping_interval = ping_interval
        self.record_limit = record_limit

        # Every exec/attach session that was upgraded, in order.
        self.sessions: list[ExecSession] = []
        # New sessions as they are upgraded (for ``await kube.next_session()``).
        self.new_sessions: asyncio.Queue[ExecSession] = asyncio.Queue()
        # Every HTTP request answered, in order.
        self.requests: list[RequestRecord] = []

        self._ssl_context: ssl.SSLContext | None = None
        self.ca_pem = ""
        if tls:
            self._ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            if tls_cert_file is not None:
                if tls_key_file is None:
                    raise ValueError("tls_cert_file needs tls_key_file")
                self._ssl_context.load_cert_chain(tls_cert_file, tls_key_file)
                self.ca_pem = Path(tls_ca_file or tls_cert_file).read_text()
            else:
                ca = trustme.CA()
                ca.issue_cert("127.0.0.1", "localhost", "::1").configure_cert(self._ssl_context)
                self.ca_pem = ca.cert_pem.bytes().decode()

        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.app.on_response_prepare.append(self._on_response_prepare)
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._next_id = 0

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on host:port (port 0 picks a free one)."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, ssl_context=self._ssl_context)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        """Drop every live session, then stop listening."""
        for session in self.sessions:
            if not session.closed.is_set():
                session.end_reason = session.end_reason or "shutdown"
                session.abort()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=_DEFAULT_WAIT)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKubeApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- addresses and client helpers ------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{self.host}:{self._port}"

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT`` (``http://`` when tls=False)."""
        return f"{'https' if self.tls else 'http'}://{self.host_port}"

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client SSL context trusting the fake's CA (a default one for plain http)."""
        if not self.ca_pem:
            return ssl.create_default_context()
        return ssl.create_default_context(cadata=self.ca_pem)

    def exec_url(
        self,
        pod: str = "mypod",
        container: str | None = "main",
        command: Sequence[str] = ("sh",),
        *,
        tty: bool = True,
        stdin: bool = True,
        stdout: bool = True,
        stderr: bool = False,
        namespace: str = "default",
        scheme: str | None = None,
    ) -> str:
        """A pods/exec URL with the query written the way kubectl writes it."""
        params = [("command", c) for c in command]
        return self._stream_url(
            "exec", namespace, pod, container, params, tty, stdin, stdout, stderr, scheme
        )

    def attach_url(
        self,
        pod: str = "mypod",
        container: str | None = "main",
        *,
        tty: bool = True,
        stdin: bool = True,
        stdout: bool = True,
        stderr: bool = False,
        namespace: str = "default",
        scheme: str | None = None,
    ) -> str:
        """A pods/attach URL with the query written the way kubectl writes it."""
        return self._stream_url(
            "attach", namespace, pod, container, [], tty, stdin, stdout, stderr, scheme
        )

    def _stream_url(
        self,
        kind: str,
        namespace: str,
        pod: str,
        container: str | None,
        params: list[tuple[str, str]],
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        scheme: str | None,
    ) -> str:
        if container is not None:
            params.append(("container", container))
        for name, on in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr), ("tty", tty)):
            if on:
                params.append((name, "true"))
        params.sort(key=lambda kv: kv[0])  # stable: repeated command= keep their order
        scheme = scheme or ("wss" if self.tls else "ws")
        path = _POD_PATH.format(ns=namespace, name=pod)
        return f"{scheme}://{self.host_port}{path}/{kind}?{urlencode(params)}"

    async def next_session(self, timeout: float = _DEFAULT_WAIT) -> ExecSession:
        """The next session to be upgraded (in order)."""
        try:
            async with asyncio.timeout(timeout):
                return await self.new_sessions.get()
        except TimeoutError:
            raise TimeoutError(f"no exec/attach session within {timeout}s") from None

    def add_pod(self, pod: FakePod) -> None:
        self.pods[(pod.namespace, pod.name)] = pod

    def learn_token(self, token: str, user: str) -> None:
        """Accept ``token`` as ``user`` from now on (TokenRequest, tests)."""
        self._users[token] = (user, False)

    def forget_token(self, token: str) -> None:
        self._users.pop(token, None)

    def requests_to(self, path_prefix: str) -> list[RequestRecord]:
        """Recorded requests whose path starts with ``path_prefix``."""
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    # ---- HTTP ------------------------------------------------------------------------------

    async def _on_response_prepare(
        self, request: web.Request, response: web.StreamResponse
    ) -> None:
        self.requests.append(
            RequestRecord(
                method=request.method,
                path=request.path,
                query=MultiDictProxy(MultiDict(request.query)),
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                status=response.status,
                user=request.get(_USER_KEY),
                upgrade="upgrade" in _connection_tokens(request),
            )
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._dispatch(request)
        finally:
            self._handlers.discard(task)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        authenticated = self._authenticate(request)
        identity: _Identity | None = None
        if isinstance(authenticated, _Identity):
            identity = authenticated
            request[_USER_KEY] = identity.user
        elif path not in _PUBLIC_PATHS or _presented_credentials(request):
            return authenticated  # 401; anonymous may only read public info

        parts = path.strip("/").split("/")
        if identity is not None:
            acting = self._impersonate(request, identity)
            if isinstance(acting, web.Response):
                return acting
            identity = acting
            request[_USER_KEY] = identity.user
            if self.cluster is not None:
                handled = await self.cluster.handle(
                    request, identity.user, list(identity.groups), parts
                )
                if handled is not None:
                    return handled
        namespaced = len(parts) >= 5 and parts[:3] == ["api", "v1", "namespaces"]
        if namespaced and parts[4] == "pods" and len(parts) == 7 and parts[6] in ("exec", "attach"):
            if identity is None:
                return _status_response(401, "Unauthorized", "Unauthorized")
            kind: _SessionKind = "exec" if parts[6] == "exec" else "attach"
            if self.cluster is not None and not self.cluster.allowed(
                identity.user, identity.groups, "create", "", f"pods/{kind}", parts[3], parts[5]
            ):
                identity = dataclasses.replace(identity, forbidden=True)
            return await self._handle_stream(request, identity, kind, parts[3], parts[5])
        if request.method != "GET":
            return _status_response(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                {},
            )
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json_response(_VERSION)
        if path == "/api":
            return _json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": self.host_port}
                    ],
                }
            )
        if path == "/apis":
            groups = [] if self.cluster is None else [_group(g) for g in _CLUSTER_GROUPS]
            return _json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if self.cluster is not None and path.startswith("/apis/"):
            listed = _CLUSTER_GROUPS.get(path[len("/apis/") :].removesuffix("/v1"))
            if listed is not None and path.endswith("/v1"):
                return _json_response(listed)
        if path == "/api/v1":
            return _json_response(_CORE_V1_RESOURCES)
        if path == "/api/v1/pods":
            return _json_response(self._pod_list(None))
        if namespaced and parts[4] == "pods" and len(parts) == 5:
            return _json_response(self._pod_list(parts[3]))
        if namespaced and parts[4] == "pods" and len(parts) == 6:
            pod = self.pods.get((parts[3], parts[5]))
            if pod is None:
                return _pod_not_found(parts[5])
            return _json_response(pod.to_json())
        return _status_response(
            404, "NotFound", "the server could not find the requested resource", {}
        )

    def _pod_list(self, namespace: str | None) -> dict[str, Any]:
        items = [p.to_json() for (ns, _), p in self.pods.items() if namespace in (None, ns)]
        return {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1042"},
            "items": items,
        }

    def _impersonate(self, request: web.Request, identity: _Identity) -> _Identity | web.Response:
        """Impersonate-User / Impersonate-Group: only for requesters RBAC lets impersonate."""
        if self.cluster is None:
            if "Impersonate-User" in request.headers or "Impersonate-Group" in request.headers:
                user = request.headers.get("Impersonate-User", "")
                return _status_response(
                    403,
                    "Forbidden",
                    f'users "{user}" is forbidden: User "{identity.user}" cannot impersonate '
                    'resource "users" in API group "" at the cluster scope',
                    {"name": user, "kind": "users"},
                )
            return identity
        acting = self.cluster.impersonate(identity.user, list(identity.groups), request)
        if acting is None:
            return identity
        if isinstance(acting, web.Response):
            return acting
        return dataclasses.replace(identity, user=acting[0], groups=tuple(acting[1]))

    def _authenticate(self, request: web.Request) -> _Identity | web.Response:
        """Bearer header, then (WebSocket only) the token subprotocol; 401 if neither works."""
        unauthorized = _status_response(401, "Unauthorized", "Unauthorized")
        # bearertoken.Authenticator: "Bearer <token>[ anything]", scheme case-insensitive.
        parts = request.headers.get("Authorization", "").strip().split(" ", 2)
        if len(parts) >= 2 and parts[0].lower() == "bearer" and parts[1] in self._users:
            user, forbidden = self._users[parts[1]]
            return _Identity(user, "header", forbidden, groups=_groups_of(user))
        if not _is_websocket(request):
            return unauthorized
        token_entries = 0
        filtered: list[str] = []
        token = ""
        for line in request.headers.getall("Sec-WebSocket-Protocol", []):
            for entry in line.split(","):
                entry = entry.strip()
                if not entry.startswith(TOKEN_SUBPROTOCOL_PREFIX):
                    filtered.append(entry)
                    continue
                token_entries += 1
                decoded = _decode_base64url(entry[len(TOKEN_SUBPROTOCOL_PREFIX) :])
                if token_entries > 1 or decoded is None:
                    return unauthorized  # multiple tokens / invalid encoding
                token = decoded
        if not token or not filtered or token not in self._users:
            return unauthorized  # missing additional subprotocol, or a bad token
        user, forbidden = self._users[token]
        return _Identity(user, "subprotocol", forbidden, ",".join(filtered), _groups_of(user))

    async def _handle_stream(
        self,
        request: web.Request,
        identity: _Identity,
        kind: _SessionKind,
        namespace: str,
        name: str,
    ) -> web.StreamResponse:
        """pods/exec and pods/attach: the pre-upgrade checks, negotiation, then the session."""
        target = self._check_stream_request(request, identity, kind, namespace, name)
        if isinstance(target, web.Response):
            return target
        offered_first = request.headers.get("Sec-WebSocket-Protocol")
        candidates = (
            identity.filtered_protocols
            if identity.filtered_protocols is not None
            else offered_first
        )
        chosen = negotiate_subprotocol(
            candidates, self.subprotocols, v5_translator=self.v5_translator
        )
        if chosen is None:
            # golang.org/x/net/websocket: handshake failure → 403 with an empty body.
            return web.Response(status=403, body=b"")

        ws: web.WebSocketResponse = web.WebSocketResponse(
            protocols=(chosen,) if chosen else (),
            compress=False,
            heartbeat=self.ping_interval,
            max_msg_size=_MAX_MESSAGE,
        )
        # aiohttp echoes what it finds in the (first) header line: hand it only the choice,
        # so a token entry never reaches its negotiation (or its log).
        headers = CIMultiDict(request.headers)
        headers.popall("Sec-WebSocket-Protocol", None)
        if chosen:
            headers["Sec-WebSocket-Protocol"] = chosen
        transport = request.transport
        await ws.prepare(request.clone(headers=headers))

        self._next_id += 1
        session = ExecSession(
            id=self._next_id,
            kind=kind,
            namespace=namespace,
            pod=name,
            container=target.container,
            command=target.command,
            path=request.path,
            query=MultiDictProxy(MultiDict(request.query)),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            user=identity.user,
            token_source=identity.source,
            offered_subprotocols=offered_first,
            subprotocol=chosen,
            stdin=target.stdin,
            stdout=target.stdout,
            stderr=target.stderr,
            tty=target.tty,
            record_limit=self.record_limit,
        )
        session._ws = ws
        session._transport = transport
        self.sessions.append(session)
        self.new_sessions.put_nowait(session)
        try:
            await self._serve(session, ws)
        finally:
            session.closed.set()
            session._notify()
        return ws

    def _check_stream_request(
        self,
        request: web.Request,
        identity: _Identity,
        kind: _SessionKind,
        namespace: str,
        name: str,
    ) -> _StreamTarget | web.Response:
        """The apiserver's (and kubelet's) checks before an upgrade, in their order."""
        upgrade = request.headers.get("Upgrade", "").strip().lower()
        upgrading = "upgrade" in _connection_tokens(request)
        is_ws = upgrading and upgrade == "websocket"
        is_spdy = upgrading and upgrade.startswith("spdy/")

        if identity.forbidden:
            verb = "get" if request.method == "GET" else "create"
            return _status_response(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: User "{identity.user}" cannot {verb} resource '
                f'"pods/{kind}" in API group "" in the namespace "{namespace}"',
                {"name": name, "kind": "pods"},
            )
        pod = self.pods.get((namespace, name))
        if pod is None:
            return _pod_not_found(name)
        if not pod.node_name:
            return _bad_request(f"pod {name} does not have a host assigned")
        container_name = request.query.get("container", "")
        if not container_name:
            if len(pod.containers) != 1:
                names = " ".join(c.name for c in pod.containers)
                message = (
                    f"a container name must be specified for pod {name}, choose one of: [{names}]"
                )
                if pod.init_containers:
                    inits = " ".join(c.name for c in pod.init_containers)
                    message += f" or one of the init containers: [{inits}]"
                return _bad_request(message)
            container_name = pod.containers[0].name
        container = pod.container(container_name) or next(
            (c for c in pod.init_containers if c.name == container_name), None
        )
        if container is None:
            return _bad_request(f"container {container_name} is not valid for pod {name}")
        command = request.query.getall("command", []) if kind == "exec" else list(container.command)
        if kind == "exec" and not command:
            return _bad_request("you must specify at least one command for the container")
        if not (is_ws or is_spdy):
            return _bad_request("Upgrade request required")

        tty = parse_bool_param(request.query.getall("tty", []))
        stdin = parse_bool_param(request.query.getall("stdin", []))
        stdout = parse_bool_param(request.query.getall("stdout", []))
        stderr = parse_bool_param(request.query.getall("stderr", [])) and not tty
        if not (stdin or stdout or stderr):
            # The kubelet refuses this before upgrading, with http.Error (plain text).
            return web.Response(
                status=400, text="you must specify at least 1 of stdin, stdout, stderr\n"
            )
        if is_spdy:
            return _bad_request("SPDY is not supported by this fake")
        return _StreamTarget(container.name, command, stdin, stdout, stderr, tty)

    # ---- a session after the upgrade -------------------------------------------------------

    async def _serve(self, session: ExecSession, ws: web.WebSocketResponse) -> None:
        """Run the command against the WebSocket until one side ends the session."""
        loop = asyncio.get_running_loop()
        stdin = _Pipe(_STDIN_PIPE_LIMIT)
        io = ProcessIO(session, stdin)
        # The empty frame on the lowest writable stream, as kubelet and translator send it.
        first = (
            STREAM_STDOUT if session.stdout else STREAM_STDERR if session.stderr else STREAM_ERROR
        )
        try:
            await session.send(first, b"")
        except ConnectionError:
            session.end_reason = "connection-lost"
            return
        reader = loop.create_task(
            self._read_client(session, ws, stdin), name=f"fake-kube-read-{session.id}"
        )
        process = loop.create_task(
            _run_command(io, session.command), name=f"fake-kube-process-{session.id}"
        )
        try:
            waiters: set[asyncio.Future[Any]] = {reader, process, session._finish}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            outcome, reason = self._outcome(session, reader, process)
            if outcome is not None:
                # Stop reading first: aiohttp's close() must not race a pending receive().
                # close() then waits for the client's close frame (up to its timeout).
                for task in (process, reader):
                    task.cancel()
                await asyncio.wait({process, reader})
                stdin.close_read()
                if not ws.closed and not session._aborted:
                    await self._send_status(session, ws, outcome)
                    session.end_reason = reason
                    session._ending.set()
                    await ws.close(code=outcome.close_code)
                    if ws.exception() is None:
                        session.client_close_code = ws.close_code
        finally:
            session._ending.set()
            stdin.close_read()
            for task in (reader, process):
                task.cancel()
            await asyncio.wait({reader, process})
            for task in (reader, process):
                exc = None if task.cancelled() else task.exception()
                if exc is not None and not isinstance(exc, ConnectionError):
                    logger.error("%s failed", task.get_name(), exc_info=exc)
            if session.end_reason is None:
                if session._aborted:
                    session.end_reason = "aborted"
                elif not reader.cancelled() and reader.exception() is None:
                    session.end_reason = reader.result()
                else:
                    session.end_reason = "connection-lost"

    @staticmethod
    def _outcome(
        session: ExecSession, reader: asyncio.Task[str], process: asyncio.Task[int]
    ) -> tuple[_Finish | None, str]:
        """What to report on stream 3, if anything.

        A connection that is already gone gets nothing; else a finish() request beats the
        process's own exit.
        """
        if reader.done():
            return None, ""
        if session._finish.done():
            return session._finish.result(), "finished"
        if not process.done():
            return None, ""
        exc = process.exception()
        if exc is None:
            return _Finish(process.result()), "exited"
        if isinstance(exc, ConnectionError):
            return None, ""  # the client went away mid-write
        return _Finish(error=f"fake command failed: {exc!r}"), "exited"

    async def _send_status(
        self, session: ExecSession, ws: web.WebSocketResponse, outcome: _Finish
    ) -> None:
        session.exit_code = None if outcome.error else outcome.exit_code
        if outcome.error is not None:
            body = _internal_error_status(outcome.error)
        elif outcome.exit_code == 0:
            body = _SUCCESS_STATUS
        elif session._wire.version == 5:
            # Via the apiserver's stream translator the error is the SPDY client's text.
            body = _exit_status(
                outcome.exit_code, f"command terminated with exit code {outcome.exit_code}"
            )
        else:
            argv = " ".join(session.command)
            body = _exit_status(
                outcome.exit_code,
                f"error executing command [{argv}], exit code {outcome.exit_code}",
            )
        if session._wire.version >= 4:
            session.status = body
            payload = _dumps(body).encode()
        elif body["status"] == "Success":
            return  # v1 writes nothing on success
        else:
            session.status = str(body["message"])
            payload = session.status.encode()
        with contextlib.suppress(ConnectionError):
            await session.send(STREAM_ERROR, payload)

    async def _read_client(
        self, session: ExecSession, ws: web.WebSocketResponse, stdin: _Pipe
    ) -> str:
        """Read client frames until the connection ends; return why it ended."""
        resize = _ResizeDecoder()
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.BINARY:
                    data: bytes = msg.data
                elif msg.type is WSMsgType.TEXT:
                    data = msg.data.encode()
                elif msg.type is WSMsgType.CLOSE:
                    session.client_close_code = msg.data
                    session.client_close_reason = msg.extra
                    session._notify()
                    return "client-closed"
                elif msg.type is WSMsgType.CLOSING:
                    return "server-closed"
                else:  # CLOSED, ERROR
                    return "connection-lost"
                if not data:
                    continue
                try:
                    channel, payload = session._wire.decode(data)
                except ValueError as exc:
                    session._protocol_error(str(exc))
                    continue
                if not await self._on_frame(session, channel, payload, stdin, resize):
                    return "protocol-error"
        finally:
            stdin.close_write()

    async def _on_frame(
        self,
        session: ExecSession,
        channel: int,
        payload: bytes,
        stdin: _Pipe,
        resize: _ResizeDecoder,
    ) -> bool:
        """Handle one client frame; False when the connection must be dropped."""
        if channel == STREAM_CLOSE and session._wire.version == 5:
            target = payload[0] if len(payload) == 1 else None
            if target is None or target >= _CHANNEL_COUNT:
                session._protocol_error(f"invalid close signal {payload!r}")
                session._drop()
                return False
            session.close_signals.append(target)
            if target == STREAM_STDIN:
                stdin.close_write()
            session._notify()
        elif channel == STREAM_STDIN:
            session._record_stdin(payload)
            if not session.stdin:
                return True
            if session.tty and EOT in payload:
                # A PTY in canonical mode: ^D ends the input.
                await stdin.write(payload[: payload.index(EOT)])
                stdin.close_write()
            else:
                await stdin.write(payload)
        elif channel == STREAM_RESIZE:
            try:
                session.resizes.extend(resize.feed(payload))
            except ValueError as exc:
                session._protocol_error(str(exc))
            session._notify()
        else:
            # Write-only or out-of-range channel: the real server ignores it.
            session._protocol_error(f"ignored frame on channel {channel}")
        return True


def _groups_of(user: str) -> tuple[str, ...]:
    """The groups the authenticator adds: service accounts get theirs, everyone
    system:authenticated."""
    if user.startswith("system:serviceaccount:"):
        namespace = user.split(":")[2]
        return (
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
        )
    return ("system:authenticated",)


def _group(name: str) -> dict[str, Any]:
    version = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {"name": name, "versions": [version], "preferredVersion": version}


def _connection_tokens(request: web.BaseRequest) -> list[str]:
    return [t.strip().lower() for t in request.headers.get("Connection", "").split(",")]


def _is_websocket(request: web.BaseRequest) -> bool:
    return (
        "upgrade" in _connection_tokens(request)
        and request.headers.get("Upgrade", "").strip().lower() == "websocket"
    )


def _presented_credentials(request: web.BaseRequest) -> bool:
    if "Authorization" in request.headers:
        return True
    return any(
        TOKEN_SUBPROTOCOL_PREFIX in line
        for line in request.headers.getall("Sec-WebSocket-Protocol", [])
    )


def _decode_base64url(value: str) -> str | None:
    """Go's base64.RawURLEncoding + utf8.Valid; None when invalid."""
    if "=" in value or len(value) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _pod_not_found(name: str) -> web.Response:
    return _status_response(
        404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"}
    )


def _bad_request(message: str) -> web.Response:
    return _status_response(400, "BadRequest", message)


_VERSION: Final = {
    "major": "1",
    "minor": "36",
    "emulationMajor": "1",
    "emulationMinor": "36",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "35",
    "gitVersion": KUBE_VERSION,
    "gitCommit": "0f29094c0a5b4c1e0c4d7b36a1d1e7c7a1c0ffee",
    "gitTreeState": "clean",
    "buildDate": "2026-07-15T00:00:00Z",
    "goVersion": "go1.25.1",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _resource(
    name: str,
    kind: str,
    verbs: list[str],
    *,
    namespaced: bool = True,
    short: list[str] | None = None,
    singular: str = "",
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "name": name,
        "singularName": singular,
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs,
    }
    if short:
        res["shortNames"] = short
    return res


_RW = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_CORE_V1_RESOURCES: Final = {
    "kind": "APIResourceList",
    "groupVersion": "v1",
    "resources": [
        _resource("configmaps", "ConfigMap", _RW, short=["cm"], singular="configmap"),
        _resource("endpoints", "Endpoints", _RW, short=["ep"], singular="endpoints"),
        _resource("events", "Event", _RW, short=["ev"], singular="event"),
        _resource(
            "namespaces",
            "Namespace",
            ["create", "delete", "get", "list", "patch", "update", "watch"],
            namespaced=False,
            short=["ns"],
            singular="namespace",
        ),
        _resource("nodes", "Node", _RW, namespaced=False, short=["no"], singular="node"),
        _resource(
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            _RW,
            short=["pvc"],
            singular="persistentvolumeclaim",
        ),
        _resource("pods", "Pod", _RW, short=["po"], singular="pod"),
        _resource("pods/attach", "PodAttachOptions", ["create", "get"]),
        _resource("pods/binding", "Binding", ["create"]),
        _resource("pods/ephemeralcontainers", "Pod", ["get", "patch", "update"]),
        _resource("pods/eviction", "Eviction", ["create"]),
        _resource("pods/exec", "PodExecOptions", ["create", "get"]),
        _resource("pods/log", "Pod", ["get"]),
        _resource("pods/portforward", "PodPortForwardOptions", ["create", "get"]),
        _resource("pods/proxy", "PodProxyOptions", ["create", "delete", "get", "patch", "update"]),
        _resource("pods/status", "Pod", ["get", "patch", "update"]),
        _resource("secrets", "Secret", _RW, singular="secret"),
        _resource(
            "serviceaccounts", "ServiceAccount", _RW, short=["sa"], singular="serviceaccount"
        ),
        _resource("services", "Service", _RW, short=["svc"], singular="service"),
    ],
}


def _resource_list(group: str, *resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/v1",
        "resources": list(resources),
    }


_CLUSTER_GROUPS: Final[dict[str, dict[str, Any]]] = {
    "authorization.k8s.io": _resource_list(
        "authorization.k8s.io",
        _resource(
            "selfsubjectaccessreviews", "SelfSubjectAccessReview", ["create"], namespaced=False
        ),
        _resource("subjectaccessreviews", "SubjectAccessReview", ["create"], namespaced=False),
    ),
    "rbac.authorization.k8s.io": _resource_list(
        "rbac.authorization.k8s.io",
        _resource("rolebindings", "RoleBinding", _RW, singular="rolebinding"),
    ),
    "networking.k8s.io": _resource_list(
        "networking.k8s.io",
        _resource(
            "networkpolicies", "NetworkPolicy", _RW, short=["netpol"], singular="networkpolicy"
        ),
    ),
}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_token(value: str, default_user: str) -> tuple[str, str]:
    token, sep, user = value.partition("=")
    return token, (user if sep else default_user)


async def _serve_forever(args: argparse.Namespace) -> None:
    server = FakeKubeApiServer(
        tokens=dict(_parse_token(t, "fake-user") for t in args.token or [DEFAULT_TOKEN]),
        forbidden_tokens=dict(_parse_token(t, "forbidden-user") for t in args.forbidden_token),
        tls=not args.plain_http,
        host=args.host,
        port=args.port,
        ping_interval=args.ping_interval,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        tls_ca_file=args.tls_ca,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        if args.write_ca and server.ca_pem:
            Path(args.write_ca).write_text(server.ca_pem)
        print(f"READY {server.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.kube_apiserver", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tls-cert", help="PEM certificate (default: a fresh trustme CA + cert)")
    parser.add_argument("--tls-key", help="PEM key for --tls-cert")
    parser.add_argument("--tls-ca", help="CA PEM for --write-ca when --tls-cert is given")
    parser.add_argument("--write-ca", help="write the CA PEM clients must trust to this file")
    parser.add_argument(
        "--plain-http", action="store_true", help="serve http (kubectl needs https)"
    )
    parser.add_argument(
        "--token", action="append", help="valid token, TOKEN or TOKEN=USER (repeatable)"
    )
    parser.add_argument(
        "--forbidden-token",
        action="append",
        default=[],
        help="token denied pods/exec (TOKEN[=USER])",
    )
    parser.add_argument("--ping-interval", type=float, default=None)
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_serve_forever(args))


if __name__ == "__main__":
    main()
