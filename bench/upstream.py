"""A minimal, fast fake upstream: a kube-apiserver-style exec WebSocket server.

Raw asyncio (uvloop when importable), handshake by hand, no library. It answers the
subprotocol it likes best from the client's offer (``v5.channel.k8s.io``, then
``v4.channel.k8s.io``, then ``channel.k8s.io``) and speaks binary ``[stream byte] +
payload`` frames. The URL's query chooses what a session does:

- ``mode=down&size=S&count=N``: N stdout frames ``[1] + S bytes``, written in 256 KiB
  batches, then a stream-3 Success status (v4/v5) and a close 1000. ``count=0`` streams
  until the client closes or sends the v5 close signal.
- ``mode=sink[&total=T]``: counts stdin payload bytes (``[0] + ...``, stream byte not
  counted) until T bytes have arrived, the client sends the v5 close signal ``[255, 0]``
  or closes; then writes ``[1] + b"<count>\\n"``, the status and a close 1000.
- ``mode=echo``: echoes each stdin frame as stdout.
- ``mode=idle``: holds the session (pings are answered in every mode).

Run as ``python -m bench.upstream [--tls-cert PEM]``: prints ``{"port": N}`` on stdout
(and ``"tls_port": M`` with ``--tls-cert``, a file holding the private key and the
certificate chain: the same sessions over TLS, as kube-apiserver serves them), serves on
127.0.0.1 until SIGTERM or until its stdin closes (the harness died).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from typing import cast
from urllib.parse import parse_qs, urlsplit

from bench.common import raise_nofile, run, stop_event
from bench.wsproto import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    accept_key,
    close_payload,
    encode_frame,
    mask,
    parse_head,
)

__all__ = ["main"]

PREFERENCE = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
BATCH = 256 * 1024
STATUS = encode_frame(OP_BINARY, b'\x03{"metadata":{},"status":"Success"}')
CLOSE_1000 = encode_frame(OP_CLOSE, close_payload(1000))
MAX_HEAD = 64 * 1024
CLOSE_WAIT = 10.0


class Session(asyncio.Protocol):
    """One upstream WebSocket connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.mode = "idle"
        self.params: dict[str, str] = {}
        self.protocol = ""
        self.close_sent = False
        self.stopping = False
        self.closed = False
        self._skip = 0
        self._credit = 0
        self.sunk = 0
        self.total = 0
        self._writable: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not a subclass of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=1024 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stopping = True
        self.resume_writing()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.open:
            if self._skip >= len(data) and not self.buf:
                self._skip -= len(data)
                if not self._skip:
                    self._frame_done()
                return
            self.buf += data
            self._frames()
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._abort()
            return
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        self._handshake(head)
        if self.buf:
            self._frames()

    # Handshake -----------------------------------------------------------------------

    def _handshake(self, head: bytes) -> None:
        assert self.transport is not None
        line, headers = parse_head(head)
        parts = line.split(" ")
        key = headers.get("sec-websocket-key", "")
        if len(parts) != 3 or parts[0] != "GET" or not key:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return
        query = parse_qs(urlsplit(parts[1]).query)
        self.params = {name: values[-1] for name, values in query.items()}
        self.mode = self.params.get("mode", "idle")
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        self.protocol = next((p for p in PREFERENCE if p in offered), "")
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(key)}",
        ]
        if self.protocol:
            lines.append(f"Sec-WebSocket-Protocol: {self.protocol}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.open = True
        if self.mode == "down":
            size = int(self.params.get("size", "16384"))
            count = int(self.params.get("count", "1000"))
            self._task = asyncio.get_running_loop().create_task(self._stream(size, count))
        elif self.mode == "sink":
            self.total = int(self.params.get("total", "0"))

    # Reading -------------------------------------------------------------------------

    def _frames(self) -> None:
        buf = self.buf
        end = len(buf)
        pos = 0
        if self._skip:
            pos = min(self._skip, end)
            self._skip -= pos
            if not self._skip:
                self._frame_done()
        while not self.closed:
            avail = end - pos
            if avail < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if avail < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if avail < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            key = b"\0\0\0\0"
            if b1 & 0x80:
                if avail < head + 4:
                    break
                key = bytes(buf[pos + head : pos + head + 4])
                head += 4
            opcode = b0 & 0x0F
            if length <= 125 or (self.mode == "echo" and opcode < 8):
                if avail < head + length:
                    break
                payload = mask(bytes(buf[pos + head : pos + head + length]), key)
                pos += head + length
                self._message(opcode, payload)
                continue
            # A large data frame: only its stream byte matters (sink counts the rest).
            if avail < head + 1:
                break
            stream = buf[pos + head] ^ key[0]
            self._credit = length - 1 if stream == 0 else 0
            pos += head
            take = min(length, end - pos)
            pos += take
            self._skip = length - take
            if not self._skip:
                self._frame_done()
        del buf[:pos]

    def _frame_done(self) -> None:
        self.sunk += self._credit
        self._credit = 0
        if self.mode == "sink" and self.total and self.sunk >= self.total:
            self._finish_sink()

    def _message(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == OP_PING:
            self.transport.write(encode_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.stopping = True
            if self.mode == "sink" and not self.close_sent:
                self._finish_sink()
            if not self.close_sent:
                code = payload[:2] if len(payload) >= 2 else close_payload(1000)
                self.transport.write(encode_frame(OP_CLOSE, code))
                self.close_sent = True
            self.transport.close()
            self.closed = True
        elif opcode < 8 and payload:
            stream = payload[0]
            if stream == 0:
                if self.mode == "echo":
                    self.transport.write(encode_frame(OP_BINARY, b"\x01" + payload[1:]))
                elif self.mode == "sink":
                    self.sunk += len(payload) - 1
                    if self.total and self.sunk >= self.total:
                        self._finish_sink()
            elif stream == 255:  # v5 close signal: stdin ended
                self.stopping = True
                if self.mode == "sink":
                    self._finish_sink()

    # Writing -------------------------------------------------------------------------

    async def _stream(self, size: int, count: int) -> None:
        assert self.transport is not None
        frame = encode_frame(OP_BINARY, b"\x01" + b"x" * size)
        per_batch = max(1, BATCH // len(frame))
        batch = frame * per_batch
        left = count if count > 0 else -1
        while left and not self.stopping:
            n = per_batch if left < 0 else min(per_batch, left)
            self.transport.write(batch if n == per_batch else frame * n)
            if left > 0:
                left -= n
            if self._writable is not None:
                await self._writable
        if not self.closed:
            self._end()

    def _finish_sink(self) -> None:
        if self.close_sent or self.closed:
            return
        assert self.transport is not None
        self.transport.write(encode_frame(OP_BINARY, b"\x01" + f"{self.sunk}\n".encode()))
        self._end()

    def _end(self) -> None:
        """Status (v4/v5 only) and close 1000; the client's close reply ends the TCP."""
        assert self.transport is not None
        if self.close_sent:
            return
        if self.protocol != "channel.k8s.io":
            self.transport.write(STATUS)
        self.transport.write(CLOSE_1000)
        self.close_sent = True
        asyncio.get_running_loop().call_later(CLOSE_WAIT, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


async def serve(port: int, tls_cert: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Session, "127.0.0.1", port, backlog=4096)
    announced = {"port": server.sockets[0].getsockname()[1]}
    servers = [server]
    if tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert)
        tls = await loop.create_server(Session, "127.0.0.1", 0, backlog=4096, ssl=context)
        announced["tls_port"] = tls.sockets[0].getsockname()[1]
        servers.append(tls)
    print(json.dumps(announced), flush=True)
    done = stop_event()
    try:
        await done.wait()
    finally:
        for each in servers:
            each.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake exec upstream for the benchmark")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert", help="PEM file: private key and certificate chain")
    args = parser.parse_args()
    raise_nofile()
    run(serve(args.port, args.tls_cert))


if __name__ == "__main__":
    main()
