"""The session server: GitLab Runner's ``session_server`` model over TLS, in-process.

Data flow::

    SessionServer.start()   fresh key + self-signed cert (certs.py), aiohttp on wss://host:port
    new_session()           Ticket(url=wss://…/session/<id>/exec, authorization="Bearer <token>")
    GET /session/<id>/exec  404 unknown/ended id → 401 wrong Authorization → 405 not a
                            WebSocket → 403 no supported subprotocol → 423 terminal already
                            attached → 101, initial empty stdout frame, spawn the command on
                            a PTY (pty.py), relay (session.py), end:
        process exited      drained output, status on stream 3, close 1000
        client left         SIGHUP to the process group, SIGKILL after kill_grace, reap
        aclose()            close 1001, then the same as "client left"
    the URL is then discarded (404), as it is when no terminal claims it in claim_timeout.

Checks that refuse a request run before anything is spawned, so a refused request changes
nothing. Each session logs one line when its terminal attaches and one when it ends, with
an 8-character id prefix, never the token.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

from aiohttp import WSCloseCode, hdrs, web

from ..protocols import Exit, Role, codec_for, negotiate
from ..protocols.kubernetes import BASE64_V1, BASE64_V4, V1, V4, V5
from .certs import generate_identity, server_context
from .pty import PtyProcess, exit_status
from .session import Ending, Outcome, Phase, SessionState, run_terminal, send_frame

__all__ = ["SUBPROTOCOLS", "SessionLimitError", "SessionServer", "Ticket"]

log = logging.getLogger("terminal_proxy.sessionserver")

# What a client may offer; its own order decides (first supported one wins).
SUBPROTOCOLS: Final[tuple[str, ...]] = (V5, V4, BASE64_V4, V1, BASE64_V1)
# How long ws.close() waits for the client's close reply.
_CLOSE_TIMEOUT: Final = 5.0
# How long AppRunner.cleanup() lets handlers finish after every session was ended.
_SHUTDOWN_TIMEOUT: Final = 5.0
_NOT_WEBSOCKET: Final = "Request is not a web socket connection"
# Close code and reason per interruption; anything else closes with 1000.
_CLOSE: Final[dict[Outcome, tuple[WSCloseCode, bytes]]] = {
    Outcome.PROTOCOL_ERROR: (WSCloseCode.PROTOCOL_ERROR, b"protocol error"),
    Outcome.SHUTDOWN: (WSCloseCode.GOING_AWAY, b"server shutting down"),
}


class SessionLimitError(RuntimeError):
    """``new_session`` while ``max_sessions`` sessions are live."""


@dataclass
class Ticket:
    """What a gateway needs to attach a terminal to one session.

    A plain copy: the server keeps its own record, so changing a ticket changes nothing.
    (Not frozen, so it satisfies protocols that declare ``url: str`` and friends.)
    """

    id: str
    url: str
    # The exact ``Authorization`` header value the session requires.
    authorization: str = field(repr=False)


@dataclass(eq=False)
class _Session:
    state: SessionState
    authorization: str = field(repr=False)
    expiry: asyncio.TimerHandle | None = None
    # Resolved by aclose(): the attached terminal must end now.
    stop: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _authorized(request: web.Request, expected: str) -> bool:
    """Exactly one Authorization header, equal to ``expected`` (constant-time compare)."""
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    if len(values) != 1:
        return False
    return hmac.compare_digest(values[0].encode("utf-8", "surrogateescape"), expected.encode())


def _offered(request: web.Request) -> list[str]:
    """The client's subprotocols in its order (first header line, as aiohttp reads it)."""
    header = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
    return [name.strip() for name in header.split(",") if name.strip()]


class SessionServer:
    """Serve ``/session/<id>/exec`` terminals for one-time tickets; see the module doc."""

    def __init__(
        self,
        command: Sequence[str] = ("bash", "-l"),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        claim_timeout: float | None = 60.0,
        kill_grace: float = 2.0,
        max_sessions: int = 64,
    ) -> None:
        if not command:
            raise ValueError("command must not be empty")
        if claim_timeout is not None and claim_timeout <= 0:
            raise ValueError("claim_timeout must be positive (or None: no expiry)")
        if kill_grace < 0 or max_sessions < 1:
            raise ValueError("kill_grace must be >= 0 and max_sessions >= 1")
        self.command: Final = tuple(command)
        self.env: Final = dict(env) if env is not None else None
        self.cwd: Final = cwd
        self.claim_timeout: Final = claim_timeout
        self.kill_grace: Final = kill_grace
        self.max_sessions: Final = max_sessions
        self._host: Final = host
        self._port: Final = port
        self._runner: web.AppRunner | None = None
        self._sessions: dict[str, _Session] = {}
        self._closing = False
        self._url_host = ""
        self.ca_pem = ""
        self.host_port = ""

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``https://host:port`` once started."""
        return f"https://{self.host_port}"

    async def __aenter__(self) -> SessionServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Generate a new certificate and start listening."""
        if self._runner is not None:
            raise RuntimeError("session server already started")
        identity = generate_identity([self._host])
        app = web.Application()
        app.router.add_route("*", "/session/{id}/exec", self._handle_exec)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=server_context(identity))
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        port = runner.addresses[0][1]
        host = self._host.strip("[]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            if address.is_unspecified:  # listening everywhere: advertise loopback
                host = "::1" if address.version == 6 else "127.0.0.1"
            if address.version == 6 or host == "::1":
                host = f"[{host}]"
        self._runner = runner
        self._closing = False
        self.ca_pem = identity.cert_pem
        self.host_port = f"{host}:{port}"
        log.debug("session server listening on %s", self.url)

    async def aclose(self) -> None:
        """End every session (close 1001, process groups ended and reaped) and stop."""
        runner = self._runner
        if runner is None:
            return
        self._closing = True
        attached = []
        for session in list(self._sessions.values()):
            if session.state.phase is Phase.WAITING:
                self._end(session, Ending(Outcome.SHUTDOWN, "server shutting down"))
            else:
                attached.append(session)
                if not session.stop.done():
                    session.stop.set_result(None)
        for session in attached:
            await session.state.ended.wait()
        await runner.cleanup()
        self._runner = None
        log.debug("session server stopped")

    # --- sessions -----------------------------------------------------------------------

    @property
    def sessions(self) -> dict[str, SessionState]:
        """Live sessions (waiting or attached): id → state. A new dict at every call."""
        return {key: session.state for key, session in self._sessions.items()}

    def new_session(self, command: Sequence[str] | None = None) -> Ticket:
        """A new one-time terminal URL; ``command`` overrides the server's for this one."""
        if self._runner is None or self._closing:
            raise RuntimeError("session server is not running")
        if len(self._sessions) >= self.max_sessions:
            raise SessionLimitError(f"{self.max_sessions} sessions are live already")
        argv = tuple(command) if command is not None else self.command
        if not argv:
            raise ValueError("command must not be empty")
        session_id = secrets.token_urlsafe(32)
        session = _Session(
            state=SessionState(id=session_id, command=argv),
            authorization=f"Bearer {secrets.token_urlsafe(32)}",
        )
        if self.claim_timeout is not None:
            session.expiry = asyncio.get_running_loop().call_later(
                self.claim_timeout, self._expire, session
            )
        self._sessions[session_id] = session
        return Ticket(
            id=session_id,
            url=f"wss://{self.host_port}/session/{session_id}/exec",
            authorization=session.authorization,
        )

    def _expire(self, session: _Session) -> None:
        if session.state.phase is Phase.WAITING:
            self._end(session, Ending(Outcome.EXPIRED, f"no terminal within {self.claim_timeout}s"))

    def _end(self, session: _Session, ending: Ending) -> None:
        """Discard the URL and record why; the one "ended" log line of a session."""
        state = session.state
        if state.phase is Phase.ENDED:
            return
        if session.expiry is not None:
            session.expiry.cancel()
        self._sessions.pop(state.id, None)
        state.phase = Phase.ENDED
        state.outcome = ending.outcome
        state.detail = ending.detail
        state.ended.set()
        fields = {
            "session": state.label,
            "reason": ending.outcome.value,
            "detail": ending.detail,
            "pid": state.pid,
            "exit_code": state.exit_code,
            "duration_s": round(time.monotonic() - state.created, 3),
        }
        level = logging.ERROR if ending.outcome is Outcome.ERROR else logging.INFO
        log.log(level, "session ended", extra={"fields": fields})

    # --- the exec endpoint --------------------------------------------------------------

    def _refuse(
        self, request: web.Request, session: _Session | None, status: int, text: str
    ) -> web.Response:
        label = session.state.label if session else request.match_info["id"][:8]
        fields = {"session": label, "status": status, "client": request.remote}
        log.info("exec request refused", extra={"fields": fields})
        return web.Response(status=status, text=text + "\n")

    async def _handle_exec(self, request: web.Request) -> web.StreamResponse:
        session = self._sessions.get(request.match_info["id"])
        if session is None or self._closing:
            return self._refuse(request, None, 404, "Session not found")
        if not _authorized(request, session.authorization):
            return self._refuse(request, session, 401, "Unauthorized")
        offered = _offered(request)
        chosen = negotiate(offered, SUBPROTOCOLS)
        # Without an overlap aiohttp would log a warning of its own while checking the
        # handshake; give it the offer then, and answer 403 ourselves.
        ws = web.WebSocketResponse(
            protocols=(chosen,) if chosen else tuple(offered),
            timeout=_CLOSE_TIMEOUT,
            compress=False,
        )
        if request.method != hdrs.METH_GET or not ws.can_prepare(request).ok:
            return self._refuse(request, session, 405, _NOT_WEBSOCKET)
        if chosen is None:
            supported = ", ".join(SUBPROTOCOLS)
            return self._refuse(request, session, 403, f"Unsupported subprotocol: use {supported}")
        if session.state.phase is not Phase.WAITING:
            return self._refuse(request, session, 423, "Terminal already connected")

        state = session.state
        state.phase = Phase.ATTACHED
        state.subprotocol = chosen
        if session.expiry is not None:
            session.expiry.cancel()
        state.attached.set()
        ending = Ending(Outcome.ERROR, "handler interrupted")
        try:
            await ws.prepare(request)
            fields = {
                "session": state.label,
                "subprotocol": chosen,
                "command": os.path.basename(state.command[0]),
                "client": request.remote,
            }
            log.info("session opened", extra={"fields": fields})
            ending = await self._serve(session, ws, chosen)
        except Exception as exc:
            ending = Ending(Outcome.ERROR, f"{type(exc).__name__}: {exc}")
            log.exception("session %s failed", state.label)
            if not ws.prepared:
                raise
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
        finally:
            self._end(session, ending)
        return ws

    async def _serve(self, session: _Session, ws: web.WebSocketResponse, protocol: str) -> Ending:
        """Spawn the command, relay, and end the process and the WebSocket as decided."""
        state = session.state
        codec = codec_for(protocol, Role.SERVER)
        try:
            # Like the kubelet: an empty frame on stdout right after the upgrade.
            if protocol in (BASE64_V1, BASE64_V4):
                await ws.send_str("1")
            else:
                await ws.send_bytes(b"\x01")
            if session.stop.done():  # aclose() came during the upgrade: spawn nothing
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                return Ending(Outcome.SHUTDOWN, "server shutting down")
            try:
                proc = PtyProcess.spawn(state.command, env=self.env, cwd=self.cwd)
            except OSError as exc:
                code = 127 if isinstance(exc, FileNotFoundError) else 126
                message = f"cannot run {state.command[0]!r}: {exc.strerror or exc}"
                state.exit_code = code
                for frame in codec.encode(Exit(code, f"{message}: exit code {code}")):
                    await send_frame(ws, frame)
                await ws.close()
                return Ending(Outcome.SPAWN_FAILED, message)
        except ConnectionError:
            return Ending(Outcome.CLIENT_LEFT, "client left right after the upgrade")
        state.pid = proc.pid
        try:
            ending = await run_terminal(
                ws, codec, proc, state, stop=session.stop, grace=self.kill_grace
            )
            if ending.outcome is Outcome.EXITED:
                code, message = exit_status(proc.reap())
                state.exit_code = code
                try:
                    for frame in codec.encode(Exit(code, message)):
                        await send_frame(ws, frame)
                except ConnectionError:
                    return Ending(Outcome.CLIENT_LEFT, "client left before the exit status")
                await ws.close()
                return Ending(Outcome.EXITED, f"exit code {code}")
            # Interrupted: the process ends first, then the WebSocket.
            state.exit_code = exit_status(await proc.terminate(self.kill_grace))[0]
            close_code, reason = _CLOSE.get(ending.outcome, (WSCloseCode.OK, b""))
            await ws.close(code=close_code, message=reason)
            return ending
        finally:
            await self._bury(proc, state)

    async def _bury(self, proc: PtyProcess, state: SessionState) -> None:
        """On every path: end and reap the process if still needed, close the PTY.

        Should the graceful way be interrupted (a second cancellation), SIGKILL and a
        blocking reap make sure no zombie is left behind.
        """
        try:
            if proc.returncode is None:
                state.exit_code = exit_status(await proc.terminate(self.kill_grace))[0]
        except BaseException:
            proc.kill_now()
            raise
        finally:
            proc.close()
