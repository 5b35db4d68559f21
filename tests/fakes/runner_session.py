"""A fake GitLab-Runner-style session server speaking ``terminal.gitlab.com``.

The runner's ``session_server`` serves ``/session/<id>/exec``: a WebSocket whose frames
are raw terminal bytes (or base64 text for ``base64.terminal.gitlab.com``), guarded by
the session's ``Authorization`` header (401 otherwise), 405 for a non-WebSocket request,
423 for a second terminal. This fake runs a line-echo "shell": it echoes input like a
TTY, answers ``echo X`` lines, and ``exit N`` closes the socket (1000; the protocol has
no status channel). EOT (0x04) ends it like a TTY's VEOF.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
from dataclasses import dataclass, field

import trustme
from aiohttp import WSMsgType, web

__all__ = ["FakeRunnerSession"]

PROTOCOLS = ("terminal.gitlab.com", "base64.terminal.gitlab.com")


@dataclass
class RunnerRecord:
    subprotocol: str
    headers: dict[str, str]
    stdin: bytearray = field(default_factory=bytearray)
    eot: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class FakeRunnerSession:
    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.ca_pem = self.ca.cert_pem.bytes().decode()
        self.token = secrets.token_urlsafe(16)
        self.session_id = secrets.token_hex(16)
        self.records: list[RunnerRecord] = []
        self.busy = False
        self._runner: web.AppRunner | None = None
        self.host_port = ""

    @property
    def url(self) -> str:
        return f"wss://{self.host_port}/session/{self.session_id}/exec"

    async def __aenter__(self) -> FakeRunnerSession:
        app = web.Application()
        app.router.add_get("/session/{id}/exec", self._exec)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.host_port = f"{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["id"] != self.session_id:
            return web.Response(status=404, text="Not found")
        if request.headers.get("Authorization") != self.token:
            return web.Response(status=401, text="Unauthorized")
        ws = web.WebSocketResponse(protocols=PROTOCOLS)
        if not ws.can_prepare(request).ok:
            return web.Response(status=405, text="Request is not a web socket connection")
        if self.busy:
            return web.Response(status=423, text="Terminal already connected")
        self.busy = True
        await ws.prepare(request)
        record = RunnerRecord(ws.ws_protocol or "", dict(request.headers))
        self.records.append(record)
        b64 = record.subprotocol == "base64.terminal.gitlab.com"

        async def out(data: bytes) -> None:
            if b64:
                await ws.send_str(base64.b64encode(data).decode())
            else:
                await ws.send_bytes(data)

        line = bytearray()
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    break
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                if b64:
                    data = base64.b64decode(data)
                record.stdin.extend(data)
                for byte in data:
                    if byte == 4:
                        record.eot = True
                        await ws.close()
                        return ws
                    if byte in (13, 10):
                        await out(b"\r\n")
                        command = line.decode(errors="replace").strip()
                        line.clear()
                        if command.startswith("echo "):
                            await out(command[5:].encode() + b"\r\n")
                        elif command.startswith("exit"):
                            await ws.close()
                            return ws
                        await out(b"$ ")
                    else:
                        line.append(byte)
                        await out(bytes((byte,)))
        finally:
            self.busy = False
            record.closed.set()
        return ws
