"""A minimal fake authorization API speaking the GitLab (Workhorse/Rails) contract.

Raw asyncio HTTP/1.1 with keep-alive, so it costs next to nothing beside the gateway.
``GET …/terminal.ws/authorize?QUERY`` answers 200 ``application/vnd.gitlab-workhorse+json``
with a Channel pointing at the fake upstream and carrying the browser's QUERY, so the
browser URL's query picks the upstream's mode. A query with ``tls=1`` gets the upstream's
TLS listener instead: a ``wss://`` URL and the CA that signed its certificate as the
Channel's ``CAPem``. The JWT and Gitlab-Workhorse headers are
accepted, not verified (tests/fakes/auth_api.py verifies them; this one must be cheap).

Run as ``python -m bench.authapi --upstream-port P [--tls-port P --ca-file PEM]``: prints
``{"port": N}`` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs

from bench.common import raise_nofile, run, stop_event

__all__ = ["channel_body", "main"]

MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Upstream:
    """Where the fake upstream listens: plain, and over TLS when it was started so."""

    port: int
    tls_port: int | None = None
    ca_pem: str | None = None


def channel_body(upstream: Upstream, query: str) -> bytes:
    tls = parse_qs(query).get("tls", [""])[-1] == "1"
    if tls and upstream.tls_port is not None:
        url = f"wss://127.0.0.1:{upstream.tls_port}/exec"
    else:
        url = f"ws://127.0.0.1:{upstream.port}/exec"
    if query:
        url += f"?{query}"
    channel: dict[str, object] = {
        "Subprotocols": ["channel.k8s.io"],
        "Url": url,
        "Header": {"Authorization": ["Bearer bench"]},
        "MaxSessionTime": 0,
    }
    if url.startswith("wss://"):
        channel["CAPem"] = upstream.ca_pem
    return json.dumps({"Channel": channel}).encode()


class AuthConnection(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not a subclass of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            self._answer(head)
        if len(self.buf) > MAX_HEAD:
            self.transport.close()

    def _answer(self, head: str) -> None:
        assert self.transport is not None
        line, _, rest = head.partition("\r\n")
        parts = line.split(" ")
        target = parts[1] if len(parts) == 3 else ""
        path, _, query = target.partition("?")
        close = "connection: close" in rest.lower()
        if parts[0] == "GET" and path.endswith("/terminal.ws/authorize"):
            body = channel_body(self.upstream, query)
            status = "200 OK"
            content_type = "application/vnd.gitlab-workhorse+json"
        else:
            body = b"Not found\n"
            status = "404 Not Found"
            content_type = "text/plain"
        response = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
        ).encode() + body
        self.transport.write(response)
        if close:
            self.transport.close()


async def serve(port: int, upstream: Upstream) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AuthConnection(upstream), "127.0.0.1", port, backlog=4096
    )
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": bound}), flush=True)
    done = stop_event()
    async with server:
        await done.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake GitLab authorization API")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--tls-port", type=int, help="the upstream's TLS port")
    parser.add_argument("--ca-file", help="PEM of the CA that signed the upstream's certificate")
    args = parser.parse_args()
    raise_nofile()
    ca_pem = Path(args.ca_file).read_text() if args.ca_file else None
    run(serve(args.port, Upstream(args.upstream_port, args.tls_port, ca_pem)))


if __name__ == "__main__":
    main()
