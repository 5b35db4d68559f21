"""Benchmark clients, each run as its own process: ``python -m bench.client MODE JSON``.

They play the browser. Every mode prints one JSON object on stdout (``hold`` prints one per
step and takes its cue on stdin). Two protocols:

- ``prefixed`` (direct to the upstream, or through nginx): the Kubernetes upstream's
  ``v5.channel.k8s.io`` with ``[stream byte] + payload`` frames;
- not prefixed (through the gateway): ``terminal.gitlab.com``, raw bytes.

Payload bytes never include the stream byte, so every variant's figures compare.

Modes: ``down`` (throughput, upstream to client), ``up`` (client to upstream), ``echo``
(1-byte round trips), ``setup`` (open and close sessions in a loop), ``flood`` (several
concurrent ``down`` streams measured over one time window) and ``hold`` (open N sessions,
hold them, answer pings, verify each still echoes).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import ssl
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, cast

from bench.common import raise_nofile, run
from bench.wsproto import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Scanner,
    close_payload,
    encode_frame,
    handshake_request,
    new_key,
)

__all__ = ["main"]

K8S_OFFER = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]
GITLAB_OFFER = ["terminal.gitlab.com"]
RECV_BUFFER = 1024 * 1024
SEND_BATCH = 256 * 1024
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Target:
    """Where a client connects and how it speaks."""

    host: str
    port: int
    path: str
    prefixed: bool
    # Added to every session's query (``tls=1``: the gateway dials the upstream over TLS).
    query: str = ""
    # Speak TLS to ``host:port``, trusting only this CA (the upstream's TLS listener).
    ca_file: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Target:
        return cls(
            params["host"],
            int(params["port"]),
            params["path"],
            bool(params["prefixed"]),
            params.get("query", ""),
            params.get("ca_file"),
        )

    def url(self, query: str) -> str:
        query = "&".join(q for q in (query, self.query) if q)
        return f"{self.path}?{query}" if query else self.path

    def ssl_context(self) -> ssl.SSLContext | None:
        return None if self.ca_file is None else _client_context(self.ca_file)

    @property
    def offer(self) -> list[str]:
        return K8S_OFFER if self.prefixed else GITLAB_OFFER

    def stdin_frame(self, data: bytes, key: bytes) -> bytes:
        return encode_frame(OP_BINARY, (b"\x00" + data) if self.prefixed else data, mask_key=key)

    def output(self, payload: bytes) -> bytes | None:
        """The stdout/stderr bytes of a data frame (None for another stream)."""
        if not self.prefixed:
            return payload
        if payload[:1] in (b"\x01", b"\x02"):
            return payload[1:]
        return None


@functools.cache
def _client_context(ca_file: str) -> ssl.SSLContext:
    """One verifying context per client process, as a browser or kubectl keeps one."""
    return ssl.create_default_context(cafile=ca_file)


def _masked_close(code: int = 1000) -> bytes:
    return encode_frame(OP_CLOSE, close_payload(code), mask_key=os.urandom(4))


# Blocking clients (one connection: throughput and latency) -----------------------------


class BlockingConn:
    """One WebSocket over a blocking socket with a header-only scanner."""

    def __init__(self, target: Target, query: str, *, keep_data: bool, timeout: float) -> None:
        self.target = target
        self.sock = socket.create_connection((target.host, target.port), timeout=timeout)
        context = target.ssl_context()
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname=target.host)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buf)
        self.end = 0
        self.data: list[bytes] = []
        self.close_code: int | None = None
        self.pongs: list[bytes] = []
        self.scanner = Scanner(prefixed=target.prefixed, on_frame=self._frame, keep_data=keep_data)
        self._handshake(query)

    def _handshake(self, query: str) -> None:
        request = handshake_request(
            f"{self.target.host}:{self.target.port}",
            self.target.url(query),
            self.target.offer,
            new_key(),
        )
        self.sock.sendall(request)
        while (head_end := self.buf.find(b"\r\n\r\n", 0, self.end)) < 0:
            n = self.sock.recv_into(self.view[self.end :])
            if n == 0:
                raise ConnectionError("connection closed during the handshake")
            self.end += n
        status = bytes(self.buf[: self.buf.find(b"\r\n")]).decode("latin-1")
        if " 101 " not in status + " ":
            raise ConnectionError(f"handshake refused: {status}")
        rest = self.end - head_end - 4
        self.buf[:rest] = self.buf[head_end + 4 : self.end]
        self.end = rest
        self._scan()

    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        elif opcode == OP_PING:
            self.pongs.append(payload)
        elif opcode < 8:
            self.data.append(payload)

    def _scan(self) -> None:
        pos = self.scanner.feed(self.buf, 0, self.end)
        left = self.end - pos
        if left:
            self.buf[:left] = self.buf[pos : self.end]
        self.end = left
        while self.pongs:
            self.sock.sendall(encode_frame(OP_PONG, self.pongs.pop(), mask_key=os.urandom(4)))

    def read(self) -> None:
        """One recv and scan; ConnectionError at EOF."""
        n = self.sock.recv_into(self.view[self.end :])
        if n == 0:
            raise ConnectionError("connection closed")
        self.end += n
        self._scan()

    def close(self) -> None:
        """Close handshake (bounded), then the socket."""
        try:
            self.sock.settimeout(CLOSE_TIMEOUT)
            self.sock.sendall(_masked_close())
            deadline = time.monotonic() + CLOSE_TIMEOUT
            while time.monotonic() < deadline:
                self.read()  # until the server closes the TCP connection
        except OSError:
            pass
        finally:
            self.sock.close()


def run_down(params: dict[str, Any]) -> dict[str, Any]:
    """Read ``count`` frames of ``size`` bytes; time from the 101 to the last byte."""
    target = Target.from_params(params)
    size, count = int(params["size"]), int(params["count"])
    expected = size * count
    conn = BlockingConn(
        target, f"mode=down&size={size}&count={count}", keep_data=False, timeout=params["timeout"]
    )
    try:
        started = time.perf_counter()
        while conn.scanner.payload < expected:
            if conn.close_code is not None:
                raise ConnectionError(f"closed ({conn.close_code}) after {conn.scanner.payload} B")
            conn.read()
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {
        "bytes": conn.scanner.payload,
        "frames": conn.scanner.frames,
        "seconds": seconds,
        "mb_per_s": conn.scanner.payload / seconds / 1e6,
        "frames_per_s": conn.scanner.frames / seconds,
    }


async def run_down_messages(params: dict[str, Any]) -> dict[str, Any]:
    """``run_down`` as a browser consumes it: one message at a time (aiohttp's client).

    A browser hands every WebSocket message to JavaScript separately, so what a
    terminal page sees is bounded by messages per second as much as by bytes.
    """
    import aiohttp

    target = Target.from_params(params)
    size, count = int(params["size"]), int(params["count"])
    expected = size * count
    base = f"http://{target.host}:{target.port}"
    url = base + target.url(f"mode=down&size={size}&count={count}")
    got = messages = 0
    timeout = aiohttp.ClientWSTimeout(ws_close=float(params["timeout"]))
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url, protocols=target.offer, origin=base, max_msg_size=0, timeout=timeout
        ) as ws,
    ):
        started = time.perf_counter()
        while got < expected:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                out = target.output(msg.data)
            elif msg.type is aiohttp.WSMsgType.TEXT:
                out = target.output(msg.data.encode())
            else:
                raise ConnectionError(f"{msg.type.name} ({ws.close_code}) after {got} B")
            messages += 1
            got += len(out) if out is not None else 0
        seconds = time.perf_counter() - started
    return {
        "bytes": got,
        "messages": messages,
        "seconds": seconds,
        "mb_per_s": got / seconds / 1e6,
        "messages_per_s": messages / seconds,
    }


def run_up(params: dict[str, Any]) -> dict[str, Any]:
    """Send ``count`` pre-masked frames of ``size`` bytes; time until the sink's count."""
    target = Target.from_params(params)
    size, count = int(params["size"]), int(params["count"])
    expected = size * count
    conn = BlockingConn(
        target, f"mode=sink&total={expected}", keep_data=True, timeout=params["timeout"]
    )
    frame = target.stdin_frame(b"x" * size, os.urandom(4))
    per_batch = max(1, SEND_BATCH // len(frame))
    batch = frame * per_batch
    try:
        started = time.perf_counter()
        left = count
        while left:
            n = min(per_batch, left)
            conn.sock.sendall(batch if n == per_batch else frame * n)
            left -= n
        reply = b""
        while not reply.endswith(b"\n"):
            while not conn.data:
                if conn.close_code is not None:
                    raise ConnectionError(f"closed ({conn.close_code}) before the sink's count")
                conn.read()
            reply += target.output(conn.data.pop(0)) or b""
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    counted = int(reply)
    if counted != expected:
        raise ValueError(f"upstream counted {counted} bytes, {expected} were sent")
    return {
        "bytes": counted,
        "frames": count,
        "seconds": seconds,
        "mb_per_s": counted / seconds / 1e6,
        "frames_per_s": count / seconds,
    }


def run_echo(params: dict[str, Any]) -> dict[str, Any]:
    """``warmup`` then ``count`` round trips of one byte; p50/p99 in microseconds."""
    target = Target.from_params(params)
    warmup, count = int(params["warmup"]), int(params["count"])
    conn = BlockingConn(target, "mode=echo", keep_data=True, timeout=params["timeout"])
    frame = target.stdin_frame(b"k", os.urandom(4))
    samples: list[float] = []
    try:
        for i in range(warmup + count):
            started = time.perf_counter_ns()
            conn.sock.sendall(frame)
            got = b""
            while not got:
                while not conn.data:
                    conn.read()
                got = target.output(conn.data.pop(0)) or b""
            elapsed = time.perf_counter_ns() - started
            if got != b"k":
                raise ValueError(f"echo returned {got!r}")
            if i >= warmup:
                samples.append(elapsed / 1000)
    finally:
        conn.close()
    samples.sort()
    return {
        "count": len(samples),
        "p50_us": _percentile(samples, 50),
        "p99_us": _percentile(samples, 99),
        "mean_us": statistics.fmean(samples),
    }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(pct / 100 * (len(sorted_values) - 1)))
    return sorted_values[index]


# asyncio clients (many connections) ---------------------------------------------------


class AsyncConn(asyncio.BufferedProtocol):
    """A WebSocket client connection as an asyncio buffered protocol.

    Pings are answered, the server's close frame is answered, ``data`` collects data
    frames when ``keep_data`` is set (else the scanner counts payload bytes only).
    """

    def __init__(self, target: Target, *, bufsize: int, keep_data: bool) -> None:
        loop = asyncio.get_running_loop()
        self.target = target
        self.buf = bytearray(bufsize)
        self.end = 0
        self.open = False
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.data: list[bytes] = []
        self.data_arrived = asyncio.Event()
        self.close_code: int | None = None
        self.close_sent = False
        self.scanner = Scanner(prefixed=target.prefixed, on_frame=self._frame, keep_data=keep_data)

    @classmethod
    async def open_session(
        cls, target: Target, query: str, *, bufsize: int = 4096, keep_data: bool = True
    ) -> AsyncConn:
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(
            lambda: cls(target, bufsize=bufsize, keep_data=keep_data),
            target.host,
            target.port,
            ssl=target.ssl_context(),
        )
        # uvloop calls connection_made() after create_connection() returns.
        conn.transport = transport
        request = handshake_request(
            f"{target.host}:{target.port}", target.url(query), target.offer, new_key()
        )
        conn.transport.write(request)
        try:
            await conn.upgraded
        except BaseException:
            conn.transport.abort()
            raise
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("connection lost during the handshake"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.data_arrived.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        start = 0
        if not self.open:
            head_end = self.buf.find(b"\r\n\r\n", 0, self.end)
            if head_end < 0:
                if self.end == len(self.buf):
                    self._fail(ConnectionError("handshake response too large"))
                return
            status = bytes(self.buf[: self.buf.find(b"\r\n")]).decode("latin-1")
            if " 101 " not in status + " ":
                self._fail(ConnectionError(f"handshake refused: {status}"))
                return
            self.open = True
            self.upgraded.set_result(None)
            start = head_end + 4
        pos = self.scanner.feed(self.buf, start, self.end)
        left = self.end - pos
        if left:
            self.buf[:left] = self.buf[pos : self.end]
        self.end = left

    def _fail(self, exc: Exception) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc)
        assert self.transport is not None
        self.transport.abort()

    def _frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == OP_PING:
            self.transport.write(encode_frame(OP_PONG, payload, mask_key=os.urandom(4)))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.close_sent:
                self.close_sent = True
                self.transport.write(_masked_close())
            self.data_arrived.set()
        elif opcode < 8:
            self.data.append(payload)
            self.data_arrived.set()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.target.stdin_frame(data, os.urandom(4)))

    async def echo(self, data: bytes, within: float) -> bool:
        """Send ``data`` and wait (up to ``within`` seconds) for it to come back as output."""
        self.data.clear()
        self.send(data)
        got = b""
        async with asyncio.timeout(within):
            while len(got) < len(data):
                self.data_arrived.clear()
                while self.data:
                    got += self.target.output(self.data.pop(0)) or b""
                if len(got) >= len(data):
                    break
                if self.close_code is not None or self.lost.done():
                    return False
                await self.data_arrived.wait()
        return got == data

    async def close(self) -> None:
        """Close handshake; wait (bounded) for the server to end the TCP connection."""
        assert self.transport is not None
        if not self.close_sent and not self.lost.done():
            self.close_sent = True
            self.transport.write(_masked_close())
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(self.lost)
        except TimeoutError:
            self.transport.abort()


async def run_setup(params: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` loops opening and closing sessions for ``duration`` seconds.

    With ``start_at`` (a ``time.time()``), the loops start then, not at once.
    """
    target = Target.from_params(params)
    concurrency, duration = int(params["concurrency"]), float(params["duration"])
    timeout = float(params["timeout"])
    latencies: list[float] = []
    errors: list[str] = []
    if "start_at" in params:  # several client processes: one shared window
        await asyncio.sleep(max(0.0, float(params["start_at"]) - time.time()))
    deadline = time.perf_counter() + duration

    async def loop_sessions() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    conn = await AsyncConn.open_session(target, "mode=idle")
                latencies.append((time.perf_counter() - started) * 1000)
                await conn.close()
            except (OSError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)

    started = time.perf_counter()
    await asyncio.gather(*(loop_sessions() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "sessions": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": elapsed,
        "sessions_per_s": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
    }


async def run_flood(params: dict[str, Any]) -> dict[str, Any]:
    """``sessions`` endless ``down`` streams; bytes received in one shared time window."""
    target = Target.from_params(params)
    sessions, size = int(params["sessions"]), int(params["size"])
    start_at, duration = float(params["start_at"]), float(params["duration"])
    conns = await asyncio.gather(
        *(
            AsyncConn.open_session(
                target, f"mode=down&size={size}&count=0", bufsize=RECV_BUFFER, keep_data=False
            )
            for _ in range(sessions)
        )
    )
    await asyncio.sleep(max(0.0, start_at - time.time()))
    before = sum(c.scanner.payload for c in conns)
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    after = sum(c.scanner.payload for c in conns)
    seconds = time.perf_counter() - t0
    per_session = [c.scanner.payload for c in conns]
    ended_early = sum(1 for c in conns if c.close_code is not None or c.lost.done())
    await asyncio.gather(*(c.close() for c in conns))
    return {
        "bytes": after - before,
        "seconds": seconds,
        "mb_per_s": (after - before) / seconds / 1e6,
        "per_session_total_bytes": per_session,
        "ended_early": ended_early,
    }


async def run_hold(params: dict[str, Any]) -> None:
    """Open N echo sessions in batches, report, hold until told, verify each, close."""
    target = Target.from_params(params)
    sessions, batch = int(params["sessions"]), int(params["batch"])
    timeout = float(params["timeout"])
    loop = asyncio.get_running_loop()
    conns: list[AsyncConn] = []
    open_errors: list[str] = []

    async def open_one() -> None:
        try:
            async with asyncio.timeout(timeout):
                conns.append(await AsyncConn.open_session(target, "mode=echo"))
        except (OSError, TimeoutError) as exc:
            open_errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    for first in range(0, sessions, batch):
        await asyncio.gather(*(open_one() for _ in range(min(batch, sessions - first))))
    _emit(
        {
            "event": "ready",
            "opened": len(conns),
            "open_errors": len(open_errors),
            "error_samples": open_errors[:5],
            "ramp_seconds": time.perf_counter() - started,
        }
    )
    command = await loop.run_in_executor(None, sys.stdin.readline)
    lost = sum(1 for c in conns if c.lost.done() or c.close_code is not None)
    echo_failed = 0
    verify_errors: list[str] = []
    if command.strip() == "verify":

        async def verify(conn: AsyncConn) -> str:
            """Empty when the echo came back, else why it did not."""
            started = loop.time()
            try:
                if await conn.echo(b"v", timeout):
                    return ""
            except TimeoutError:
                # Slow or lost? Give it as long again before saying which.
                try:
                    async with asyncio.timeout(timeout):
                        while not conn.data and conn.close_code is None:
                            conn.data_arrived.clear()
                            await conn.data_arrived.wait()
                except TimeoutError:
                    return f"echo timed out after {timeout:g}s and never came back"
                if conn.close_code is not None:
                    return f"echo timed out after {timeout:g}s, then closed ({conn.close_code})"
                return f"echo timed out after {timeout:g}s (came {loop.time() - started:.0f}s late)"
            if conn.close_code is not None or conn.lost.done():
                return f"closed ({conn.close_code}) before the echo"
            return "echo came back different"

        for first in range(0, len(conns), batch):
            results = await asyncio.gather(*(verify(c) for c in conns[first : first + batch]))
            failures = [r for r in results if r]
            echo_failed += len(failures)
            verify_errors.extend(failures[: 5 - len(verify_errors)])
    for first in range(0, len(conns), batch):
        await asyncio.gather(*(c.close() for c in conns[first : first + batch]))
    _emit(
        {
            "event": "done",
            "opened": len(conns),
            "open_errors": len(open_errors),
            "lost_while_held": lost,
            "echo_failed": echo_failed,
            "verify_errors": verify_errors,
            "verified": len(conns) - echo_failed if command.strip() == "verify" else 0,
        }
    )


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> int:
    mode, params = sys.argv[1], json.loads(sys.argv[2])
    raise_nofile()
    try:
        if mode == "down":
            _emit(run_down(params))
        elif mode == "down_messages":
            _emit(run(run_down_messages(params), use_uvloop=False))
        elif mode == "up":
            _emit(run_up(params))
        elif mode == "echo":
            _emit(run_echo(params))
        elif mode == "setup":
            _emit(run(run_setup(params), use_uvloop=False))
        elif mode == "flood":
            _emit(run(run_flood(params), use_uvloop=False))
        elif mode == "hold":
            run(run_hold(params), use_uvloop=False)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    except (OSError, ValueError, TimeoutError) as exc:
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
