"""Issue 11, item 1: slow, idle and too many connections, against a real gateway process.

Each test is the attack as found: a partial request head, a head trickled a byte at a
time, a silent connection, an idle keep-alive connection, more connections than allowed,
and more connections than the process has file descriptors for (a low RLIMIT_NOFILE set
in the child), with the metrics listener's /-/health still answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import GatewayProcess, standalone_config

_URL = re.compile(r"http://([0-9.]+):(\d+)")
# A request head cut short: the request line and half a header.
PARTIAL_HEAD = b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@contextlib.asynccontextmanager
async def _gateway(
    tmp_path: Path,
    limits: dict[str, Any],
    *,
    metrics: bool = False,
    preexec_fn: Callable[[], object] | None = None,
) -> AsyncIterator[GatewayProcess]:
    sections: dict[str, Any] = {"limits": limits}
    if metrics:
        sections["metrics"] = {"listen": "127.0.0.1:0"}
    config = standalone_config(tmp_path, **sections)
    async with GatewayProcess(["serve", "--config", str(config)], preexec_fn=preexec_fn) as gw:
        yield gw


def _address(url: str) -> tuple[str, int]:
    match = _URL.match(url)
    assert match, url
    return match.group(1), int(match.group(2))


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = _address(url)
    return await asyncio.open_connection(host, port)


async def _close(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _until_closed(reader: asyncio.StreamReader, timeout: float = 15) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    async with asyncio.timeout(timeout):
        return await reader.read()


async def test_partial_request_head_gets_408_and_is_closed(tmp_path: Path) -> None:
    async with _gateway(tmp_path, {"request_head_timeout": "1s"}) as gateway:
        reader, writer = await _connect(gateway.url)
        writer.write(PARTIAL_HEAD)
        answer = await _until_closed(reader)
        await _close(writer)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"request head not received within 1s" in answer
        await gateway.wait_for_line(lambda s: "request head not received within 1s" in s)


async def test_trickled_head_does_not_reset_the_head_timeout(tmp_path: Path) -> None:
    """One byte at a time (every 0.2 s here, 20 s in the attack) never completes a head:
    the connection is closed at the head timeout, counted from connect."""
    async with _gateway(tmp_path, {"request_head_timeout": "1s"}) as gateway:
        reader, writer = await _connect(gateway.url)
        started = time.monotonic()

        async def trickle() -> None:
            for byte in PARTIAL_HEAD * 100:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)  # the attack's pace, not a synchronisation

        task = asyncio.create_task(trickle())
        try:
            answer = await _until_closed(reader)
        finally:
            task.cancel()
            await _close(writer)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 10


async def test_silent_connection_is_closed_without_an_answer(tmp_path: Path) -> None:
    async with _gateway(tmp_path, {"request_head_timeout": "1s"}) as gateway:
        reader, writer = await _connect(gateway.url)
        assert await _until_closed(reader) == b""
        await _close(writer)


async def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    limits = {"request_head_timeout": "30s", "keepalive_timeout": "1s"}
    async with _gateway(tmp_path, limits) as gateway:
        reader, writer = await _connect(gateway.url)
        writer.write(b"GET /-/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await reader.readuntil(b"ok\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        # Then nothing: the keep-alive timeout (not the head timeout) closes it.
        assert await _until_closed(reader) == b""
        await _close(writer)


async def test_connections_not_upgraded_are_capped(tmp_path: Path) -> None:
    limits = {"request_head_timeout": 0, "max_http_connections": 3}
    async with _gateway(tmp_path, limits, metrics=True) as gateway:
        held = [await _connect(gateway.url) for _ in range(3)]
        for _, writer in held:
            writer.write(PARTIAL_HEAD)
        reader, writer = await _connect(gateway.url)
        answer = await _until_closed(reader)
        await _close(writer)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"Retry-After: 1\r\n" in answer
        assert b"limits.max_http_connections=3" in answer
        # One finishes its request and is closed by the gateway: there is room again.
        done_reader, done_writer = held.pop()
        done_writer.write(b"1\r\nConnection: close\r\n\r\n")
        assert (await _until_closed(done_reader)).startswith(b"HTTP/1.1 200 OK\r\n")
        await _close(done_writer)
        reader, writer = await _connect(gateway.url)
        writer.write(b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await _until_closed(reader)
        await _close(writer)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        await _close(*(writer for _, writer in held))


def _low_fd_limit() -> None:
    # In the child before exec: soft 128, hard 256; serve raises soft to 256.
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 256))


async def _metrics_get(url: str, path: str) -> bytes:
    reader, writer = await _connect(url)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        return await _until_closed(reader, timeout=10)
    finally:
        await _close(writer)


@pytest.mark.timeout(120)
async def test_fd_exhaustion_keeps_health_answering(tmp_path: Path) -> None:
    """More slow connections than the process has descriptors for: the main listener
    refuses the excess with 503, the metrics listener's /-/health still answers, and
    the soft fd limit was raised to the hard one (logged)."""
    limits = {"request_head_timeout": 0, "max_http_connections": 0}
    async with _gateway(tmp_path, limits, metrics=True, preexec_fn=_low_fd_limit) as gateway:
        line = await gateway.wait_for_line(lambda s: "metrics listening on" in s)
        metrics_url = line.split("metrics listening on ", 1)[1].removesuffix("/metrics")
        assert any("file descriptor limit raised from 128 to 256" in s for s in gateway.lines)
        held = []
        for _ in range(300):
            reader, writer = await _connect(gateway.url)
            writer.write(PARTIAL_HEAD)
            held.append((reader, writer))
        try:
            reader, writer = await _connect(gateway.url)
            answer = await _until_closed(reader)
            await _close(writer)
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
            assert b"file descriptor limit" in answer
            health = await _metrics_get(metrics_url, "/-/health")
            assert health.startswith(b"HTTP/1.1 200 OK\r\n") and health.endswith(b"ok\n")
            scrape = await _metrics_get(metrics_url, "/metrics")
            match = re.search(
                rb'terminal_proxy_connections_refused_total\{reason="fd_budget"\} (\S+)', scrape
            )
            assert match and float(match.group(1)) >= 1
        finally:
            await _close(*(writer for _, writer in held))
