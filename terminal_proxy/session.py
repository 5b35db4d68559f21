"""The relay: two pumps and the stoppers, joined in one place.

``Session.run()`` starts one pump task per direction (the same shape with the arguments
swapped, as in Workhorse's proxy.go). The stoppers (time limit, idle timeout, re-poll,
server shutdown) are loop timers that resolve one future; a re-poll runs as a task only
while it asks. The first pump to finish, or else the stoppers' future, decides the
``Stop``; everything else is cancelled and awaited; then both sockets are closed on
purpose, each with the code and reason of ``docs/close-codes.md``. Bytes the upstream
sent before it closed have all been written to the browser before the browser's close
frame, because the upstream pump only returns after the upstream's close frame and
writes in order (output it gathered to coalesce is flushed first).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMessage, WSMsgType, web

from .authorization import (
    Authorizer,
    BrowserRequest,
    Extension,
    Grant,
    PassBack,
    extend_by,
    offer_of,
)
from .errors import AuthorizationError
from .protocols import (
    TERMINAL_PROXY,
    Ack,
    Codec,
    Event,
    Exit,
    ExpiryWarning,
    ExtensionAnswer,
    ExtensionRequest,
    Frame,
    Hello,
    Opcode,
    Output,
    ProtocolError,
    Resize,
    Resume,
    Stdin,
    StdinClosed,
)
from .recording import Recorder
from .replay import ReplayBudget, ReplayBuffer
from .tasks import cancel_and_wait, spawn

__all__ = ["Session", "SessionGone", "SessionLimits", "Stop", "StopReason", "close_socket"]

log = logging.getLogger("terminal_proxy.session")

_DATA = (WSMsgType.BINARY, WSMsgType.TEXT)
_K8S_V1 = frozenset({"channel.k8s.io", "base64.channel.k8s.io"})
# Largest run of output bytes gathered into one browser frame.
COALESCE_LIMIT = 64 * 1024


def _parsed_queue(ws: ClientWebSocketResponse) -> Sized:
    """The messages aiohttp has parsed and queued but not yet returned by ``receive()``.

    aiohttp has no public "is a message ready" check, so this looks at the reader's
    queue. If a future aiohttp moves it, the result is always empty: every message is
    then sent on its own (correct, just without coalescing).
    """
    queue = getattr(getattr(ws, "_reader", None), "_buffer", None)
    return queue if isinstance(queue, Sized) else ()


class StopReason(enum.Enum):
    """Why a session ended. Values: (browser close code, upstream close code)."""

    EXITED = "exited"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_FAILED = "upstream_failed"
    BROWSER_LEFT = "browser_left"
    BROWSER_PROTOCOL_ERROR = "browser_protocol_error"
    MESSAGE_TOO_BIG = "message_too_big"
    REVOKED = "revoked"
    CHANGED = "changed"
    AUTH_UNAVAILABLE = "auth_unavailable"
    TIME_LIMIT = "time_limit"
    IDLE = "idle"
    SHUTDOWN = "shutdown"
    INTERNAL = "internal_error"
    # v1.terminal-proxy resume (docs/browser-protocol.md). Only resume_expired ends a
    # session; the others close one browser socket and the session lives on.
    TAKEN_OVER = "taken_over"
    RESUME_EXPIRED = "resume_expired"
    RESUME_UNKNOWN = "resume_unknown"
    RESUME_BAD_TOKEN = "resume_bad_token"  # noqa: S105 (a stop reason)
    RESUME_FORBIDDEN = "resume_forbidden"
    RECORDING_FAILED = "recording_failed"


# reason → (browser code, browser reason, upstream code). The one table of close codes;
# docs/close-codes.md documents it and tests/test_gateway.py checks both agree.
CLOSE_CODES: dict[StopReason, tuple[int, str, int]] = {
    StopReason.EXITED: (1000, "exit code {exit_code}", 1000),
    StopReason.UPSTREAM_CLOSED: (1000, "session ended", 1000),
    StopReason.UPSTREAM_FAILED: (1014, "upstream failed: {detail}", 1000),
    StopReason.BROWSER_LEFT: (1000, "", 1000),
    StopReason.BROWSER_PROTOCOL_ERROR: (1002, "protocol error: {detail}", 1000),
    StopReason.MESSAGE_TOO_BIG: (1009, "message too big", 1000),
    StopReason.REVOKED: (4001, "authorization revoked", 1000),
    StopReason.CHANGED: (4002, "connection details changed", 1000),
    StopReason.AUTH_UNAVAILABLE: (4003, "authorization unavailable", 1000),
    StopReason.TIME_LIMIT: (4004, "session time limit reached", 1000),
    StopReason.IDLE: (4005, "idle timeout", 1000),
    StopReason.SHUTDOWN: (1001, "server shutting down", 1001),
    StopReason.INTERNAL: (1011, "internal error", 1011),
    StopReason.TAKEN_OVER: (4006, "session resumed on another connection", 1000),
    StopReason.RESUME_EXPIRED: (4007, "session ended: resume grace expired", 1000),
    StopReason.RESUME_UNKNOWN: (4008, "no such session to resume", 1000),
    StopReason.RESUME_BAD_TOKEN: (4009, "resume refused: invalid token", 1000),
    StopReason.RESUME_FORBIDDEN: (4010, "resume refused: {detail}", 1000),
    StopReason.RECORDING_FAILED: (4011, "recording failed", 1000),
}
# The upstream's end that a detached session waits out (within the resume grace) so a
# returning browser still gets the last output and the exit status.
_LINGER = frozenset({StopReason.EXITED, StopReason.UPSTREAM_CLOSED, StopReason.UPSTREAM_FAILED})


@dataclass(frozen=True, slots=True)
class Stop:
    """The first stopper's verdict; ``detail`` is for logs and some close reasons."""

    reason: StopReason
    detail: str = ""
    exit_code: int | None = None

    @property
    def browser_code(self) -> int:
        return CLOSE_CODES[self.reason][0]

    @property
    def upstream_code(self) -> int:
        return CLOSE_CODES[self.reason][2]

    @property
    def browser_reason(self) -> str:
        template = CLOSE_CODES[self.reason][1]
        text = template.format(exit_code=self.exit_code, detail=self.detail or "closed")
        return _truncate(text, 123)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Timers and polling for one session (seconds; 0 disables)."""

    max_duration: float = 0.0
    idle_timeout: float = 0.0
    poll_interval: float = 60.0
    poll_jitter: float = 0.1
    poll_failure_grace: int = 2
    close_timeout: float = 5.0
    # v1.terminal-proxy: how long a detached session waits for its browser (0: no resume)
    # and how many output bytes it keeps for the replay.
    resume_grace: float = 0.0
    resume_buffer: int = 1024 * 1024
    # Sessions with a time limit: warn this long before the end; each granted extension
    # adds ``extension`` seconds, at most ``max_extensions`` times.
    expiry_warning: float = 0.0
    extension: float = 0.0
    max_extensions: int = 0


class SessionGone(Exception):
    """The session no longer accepts a resume (it is ending or has ended)."""


class Session:
    """One relayed terminal: browser socket, upstream socket, stoppers."""

    def __init__(
        self,
        *,
        session_id: str,
        browser: web.WebSocketResponse,
        browser_codec: Codec,
        upstream: ClientWebSocketResponse,
        upstream_codec: Codec,
        authorizer: Authorizer,
        request: BrowserRequest,
        grant: Grant,
        limits: SessionLimits,
        shutdown: asyncio.Event,
        replay_budget: ReplayBudget | None = None,
    ) -> None:
        self.id = session_id
        self.browser = browser
        self.browser_codec = browser_codec
        self.upstream = upstream
        self.upstream_codec = upstream_codec
        self._authorizer = authorizer
        self._request = request
        self._grant = grant
        self._limits = limits
        self._shutdown = shutdown
        # Payload bytes relayed: browser→upstream and upstream→browser (wire sizes).
        self.bytes_in = 0
        self.bytes_out = 0
        # The process's exit as the upstream reported it, once it has.
        self.exit: Exit | None = None
        # Loop time of the last data frame either way (for the idle timeout).
        self._last_activity = 0.0
        # How the upstream closed, when it did: (code, reason).
        self.upstream_close: tuple[int | None, str] | None = None
        self.started = time.monotonic()
        # Why the session ended, once it has.
        self.stop: Stop | None = None
        # Resolved when run() has closed both sides (waited on by the drain).
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Set by the stoppers (timers, re-poll, shutdown) with their verdict.
        self._stopped: asyncio.Future[Stop] = asyncio.get_running_loop().create_future()
        self._limit_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._poll_timer: asyncio.TimerHandle | None = None
        self._poll: asyncio.Task[Stop | None] | None = None
        self._poll_failures = 0
        # v1.terminal-proxy: control messages, and resume when resume_grace is set.
        self.controls = browser_codec.name == TERMINAL_PROXY
        self.resumable = self.controls and limits.resume_grace > 0
        self._replay: ReplayBuffer | None = None
        if self.resumable:
            self._replay = ReplayBuffer(limits.resume_buffer, replay_budget)
        # The attached browser socket (None while detached); self.browser is the latest.
        self._live: web.WebSocketResponse | None = browser
        # The socket the browser pump is reading (it may lag behind _live).
        self._reading: web.WebSocketResponse | None = None
        # Input bytes given to the upstream (the browser re-sends from here on resume).
        self.input_offset = 0
        # SHA-256 of the resume tokens that are valid now (normally one).
        self._token_hashes: list[bytes] = []
        self._attached = asyncio.Event()
        self._attached.set()
        # Cleared while a resume replays: output waits so it follows the replay.
        self._not_attaching = asyncio.Event()
        self._not_attaching.set()
        self._accepting = self.resumable
        self._detached_at: float | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._lingering: asyncio.Future[None] | None = None
        self._pending_exit: Exit | None = None
        # Futures the handlers of resumed sockets wait on, resolved when let go.
        self._releases: list[tuple[web.WebSocketResponse, asyncio.Future[None]]] = []
        self.resumes = 0
        # Time limit (loop time), expiry warning and extensions.
        self._deadline: float | None = None
        self._limit_total = 0.0
        self._warn_timer: asyncio.TimerHandle | None = None
        self._extensions = 0
        # The extension request being decided: one at a time, and one arriving meanwhile
        # is refused at once (never queued), so max_extensions holds however many come.
        self._extending: asyncio.Task[None] | None = None
        # The authorizer's ceiling was reached: the next warning says "not extendable".
        self._capped = False
        self._control_tasks: set[asyncio.Task[None]] = set()
        # Recording (docs/recording.md) and where best-effort failures are reported.
        self._recorder: Recorder | None = None
        self._audit: Callable[[str, dict[str, object]], None] | None = None
        self.recording_failure: str | None = None

    # Public API -----------------------------------------------------------------

    @property
    def grant(self) -> Grant:
        return self._grant

    @property
    def request(self) -> BrowserRequest:
        return self._request

    def start_recording(
        self, recorder: Recorder, audit: Callable[[str, dict[str, object]], None] | None
    ) -> None:
        """Record this session with ``recorder`` (before ``run``); ``audit`` gets
        best-effort failures."""
        self._recorder = recorder
        self._audit = audit

    @property
    def detached(self) -> bool:
        return self.resumable and self._live is None

    async def run(self) -> Stop:
        """Relay until the first stopper fires; close both sides; return why."""
        try:
            return await self._run()
        finally:
            self._finish_recording()
            if not self.done.done():
                self.done.set_result(None)

    def shut_down(self) -> None:
        """End the session with 1001 "server shutting down" (the drain calls this)."""
        self.request_stop(Stop(StopReason.SHUTDOWN, "server shutting down"))

    def request_stop(self, stop: Stop) -> None:
        """Ask the session to end with ``stop`` (the first request wins; pumps win ties)."""
        if not self._stopped.done():
            self._stopped.set_result(stop)

    async def _run(self) -> Stop:
        # Two tasks per session, the pumps; the stoppers are timers on the loop and a
        # future, so an idle session costs little memory (docs/performance.md).
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        if self._shutdown.is_set():
            self.shut_down()
        limit = _min_positive(self._grant.details.max_session_time, self._limits.max_duration)
        if limit:
            self._deadline = loop.time() + limit
            self._limit_total = limit
            self._schedule_deadline()
        if self.resumable:
            hello = Hello(self.id, self._new_token(), expires_in=self._remaining())
            await self._send_event(hello)
        pump_browser = self._pump_browser_controls if self.controls else self._pump_browser
        tasks: list[asyncio.Task[Stop]] = [
            spawn(self._pump_upstream(), name=f"session-{self.id}-upstream-to-browser"),
            spawn(pump_browser(), name=f"session-{self.id}-browser-to-upstream"),
        ]
        if self._limits.idle_timeout:
            self._idle_timer = loop.call_later(self._limits.idle_timeout, self._check_idle)
        if self._limits.poll_interval:
            self._schedule_poll()
        try:
            await asyncio.wait([*tasks, self._stopped], return_when=asyncio.FIRST_COMPLETED)
            self.stop = _first_stop(tasks, self._stopped)
        except asyncio.CancelledError:
            # The server cancelled the handler: its connection to the browser is gone
            # (aiohttp's handler_cancellation) or it is shutting down for good.
            if self.browser.closed or not self._shutdown.is_set():
                self.stop = Stop(StopReason.BROWSER_LEFT, "browser connection lost")
            else:
                self.stop = Stop(StopReason.SHUTDOWN, "handler cancelled")
            await self._finish(tasks, self.stop)
            raise
        except BaseException:
            await self._stop_stoppers()
            await cancel_and_wait(tasks)
            raise
        await self._finish(tasks, self.stop)
        return self.stop

    async def _finish(self, tasks: list[asyncio.Task[Stop]], stop: Stop) -> None:
        """Stop every task and close both sides.

        The upstream pump is stopped by the upstream close itself, not by cancellation:
        aiohttp marks a client socket whose ``receive()`` was cancelled as abnormally
        closed, and its ``close()`` then drops the TCP connection without waiting for
        the peer's close frame, so the upstream would see a 1006 instead of our code.
        """
        upstream_pump, others = tasks[0], tasks[1:]
        self._accepting = False
        await self._stop_stoppers()
        await cancel_and_wait(others)
        try:
            if self.detached and stop.reason in _LINGER and not self._stopped.done():
                await self._close_upstream(stop)
                await self._linger()
            await self._close(stop)
        finally:
            await cancel_and_wait([upstream_pump])
            self._release_all()
            if self._replay is not None:
                self._replay.clear()

    # Pumps -------------------------------------------------------------------------

    async def _pump_upstream(self) -> Stop:
        """Upstream → browser. Returns when the upstream closes or the browser is gone.

        Output is coalesced: while more upstream messages are already parsed and queued,
        their output bytes (same stream) are gathered, up to ``COALESCE_LIMIT``, and sent
        as one browser frame. A busy terminal's many small frames then cost one write,
        and nothing waits: the batch goes out as soon as the queue is empty.
        """
        upstream = self.upstream
        decode = self.upstream_codec.decode
        plain_output = self.upstream_codec.plain_output
        queued = _parsed_queue(upstream)
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        size = 0
        stream = 0
        while True:
            msg = await upstream.receive()
            if msg.type in _DATA:
                payload = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                self._last_activity = loop.time()
                # The common frame (plain output) skips decode() and its event object.
                if (plain := plain_output(msg.type, payload)) is not None:  # type: ignore[arg-type]
                    if chunks and (plain[0] != stream or size >= COALESCE_LIMIT):
                        if not await self._send_output(chunks, stream):
                            return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
                        chunks, size = [], 0
                    stream, data = plain
                    chunks.append(data)
                    size += len(data)
                    if size >= COALESCE_LIMIT or not queued:
                        if not await self._send_output(chunks, stream):
                            return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
                        chunks, size = [], 0
                    continue
                try:
                    events = decode(msg.type, payload)  # type: ignore[arg-type]
                except ProtocolError as exc:
                    if chunks and not await self._send_output(chunks, stream):
                        return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
                    return Stop(StopReason.UPSTREAM_FAILED, f"invalid frame from upstream: {exc}")
                for event in events:
                    if type(event) is Output:
                        if chunks and (event.stream != stream or size >= COALESCE_LIMIT):
                            if not await self._send_output(chunks, stream):
                                return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
                            chunks, size = [], 0
                        chunks.append(event.data)
                        size += len(event.data)
                        stream = event.stream
                        continue
                    if chunks:
                        if not await self._send_output(chunks, stream):
                            return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
                        chunks, size = [], 0
                    if type(event) is Exit:
                        self.exit = event
                    if not await self._send_event(event):
                        return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
                if chunks and (size >= COALESCE_LIMIT or not queued):
                    if not await self._send_output(chunks, stream):
                        return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
                    chunks, size = [], 0
                continue
            # Whatever was gathered goes out before the close is acted on.
            if chunks and not await self._send_output(chunks, stream):
                return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
            chunks, size = [], 0
            if msg.type is WSMsgType.CLOSING:
                # Our own close() woke this receive(): the session is already ending.
                return Stop(StopReason.UPSTREAM_CLOSED, "closed by the gateway")
            return await self._upstream_ended(msg.type, msg.data, msg.extra)

    async def _send_output(self, chunks: list[bytes], stream: int) -> bool:
        """Send gathered output as one event; False when the browser is gone."""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._recorder is not None:
            self._record_output(data, stream)
        if self._replay is not None:
            return await self._send_output_resumable(data, stream)
        for opcode, frame in self.browser_codec.encode(Output(data, stream)):
            try:
                await self.browser.send_frame(frame, WSMsgType(opcode))
            except ConnectionError:
                return False
            self.bytes_out += len(frame)
        return True

    def _browser_events(
        self,
        msg: WSMessage,
        decode: Callable[[Opcode, bytes], Sequence[Event]],
        loop: asyncio.AbstractEventLoop,
    ) -> Sequence[Event] | Stop:
        """One data message from the browser: counted, timed, decoded (or why it is bad)."""
        payload = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
        self._last_activity = loop.time()
        self.bytes_in += len(payload)
        try:
            return decode(msg.type, payload)  # type: ignore[arg-type]
        except ProtocolError as exc:
            return Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc))

    async def _pump_browser(self) -> Stop:
        """Browser → upstream. Returns when the browser leaves or the upstream is gone."""
        upstream, browser = self.upstream, self.browser
        decode, encode = self.browser_codec.decode, self.upstream_codec.encode
        loop = asyncio.get_running_loop()
        while True:
            try:
                msg = await browser.receive()
            except ConnectionError:
                # aiohttp answers pings inside receive(): a pong that cannot be written
                # (a client flooding pings and never reading) means the browser is gone.
                return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
            if msg.type in _DATA:
                events = self._browser_events(msg, decode, loop)
                if isinstance(events, Stop):
                    return events
                for event in events:
                    if self._recorder is not None:
                        self._record_browser(event)
                    if (stop := await _forward(upstream, encode(event))) is not None:
                        return stop
                continue
            if msg.type is WSMsgType.ERROR and _is_too_big(msg.data):
                return Stop(StopReason.MESSAGE_TOO_BIG, str(msg.data))
            code = browser.close_code
            return Stop(StopReason.BROWSER_LEFT, f"browser closed ({code})")

    async def _upstream_ended(self, kind: WSMsgType, data: Any, extra: Any) -> Stop:
        # A CLOSE message carries the peer's own code; ws.close_code may already say 1006
        # when our automatic close reply could not be written (the peer hung up first).
        code = (
            data if kind is WSMsgType.CLOSE and isinstance(data, int) else self.upstream.close_code
        )
        reason = extra if isinstance(extra, str) else ""
        self.upstream_close = (code, reason)
        if kind is WSMsgType.ERROR:
            return Stop(StopReason.UPSTREAM_FAILED, f"{type(data).__name__}: {data}")
        if code in (1000, 1001):
            if self.exit is None and self.upstream_codec.name in _K8S_V1 and code == 1000:
                # channel.k8s.io v1 writes the error stream only on failure: a clean close
                # without one is success.
                self.exit = Exit(0)
                if not await self._send_event(self.exit):
                    return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
            if self.exit is not None:
                exit_code = self.exit.code
                if exit_code is None:
                    return Stop(StopReason.UPSTREAM_FAILED, self.exit.message or "command failed")
                return Stop(StopReason.EXITED, self.exit.message, exit_code=exit_code)
            return Stop(StopReason.UPSTREAM_CLOSED, f"upstream closed ({code})")
        if code is None or code == 1006:
            return Stop(StopReason.UPSTREAM_FAILED, "connection lost")
        return Stop(StopReason.UPSTREAM_FAILED, f"closed with {code} {reason}".strip())

    async def _send_event(self, event: Event) -> bool:
        """Send one non-output event to the browser; False when the browser is gone.

        A resumable session never loses its browser this way: a failed send detaches
        it, and an exit status that found no browser waits for the next attach.
        """
        if self._replay is None and not self.controls:
            ws: web.WebSocketResponse | None = self.browser
        else:
            await self._not_attaching.wait()
            ws = self._live if self.resumable else self.browser
        if ws is None:
            if type(event) is Exit:
                self._pending_exit = event
            return True
        for opcode, data in self.browser_codec.encode(event):
            try:
                await ws.send_frame(data, WSMsgType(opcode))
            except ConnectionError:
                if not self.resumable:
                    return False
                self._detach(ws, "browser connection lost")
                if type(event) is Exit:
                    self._pending_exit = event
                return True
            self.bytes_out += len(data)
        return True

    async def _send_output_resumable(self, data: bytes, stream: int) -> bool:
        """Record output for replay, then send it if a browser is attached."""
        assert self._replay is not None
        await self._not_attaching.wait()
        self._replay.append(data)
        ws = self._live
        if ws is None:
            return True
        for opcode, frame in self.browser_codec.encode(Output(data, stream)):
            try:
                await ws.send_frame(frame, WSMsgType(opcode))
            except ConnectionError:
                self._detach(ws, "browser connection lost")
                return True
            self.bytes_out += len(frame)
        return True

    async def _pump_browser_controls(self) -> Stop:
        """Browser → upstream for v1.terminal-proxy: reads whichever socket is attached.

        When the session is resumable, a socket that ends without a normal close (1000)
        detaches the session and the pump waits for the next attach. Control messages
        (acks, extension requests) stay in the gateway.
        """
        upstream = self.upstream
        decode, encode = self.browser_codec.decode, self.upstream_codec.encode
        loop = asyncio.get_running_loop()
        while True:
            ws = self._live
            if ws is None:
                self._reading = None
                await self._attached.wait()
                continue
            self._reading = ws
            try:
                msg = await ws.receive()
            except ConnectionError:
                # A pong aiohttp could not write (see _pump_browser): the socket is gone.
                if ws is not self._live:
                    continue
                if not self.resumable:
                    return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
                self._detach(ws, "browser connection lost")
                continue
            if ws is not self._live:
                continue  # taken over or detached while we waited: read the new one
            if msg.type in _DATA:
                events = self._browser_events(msg, decode, loop)
                if isinstance(events, Stop):
                    return events
                for event in events:
                    if self._recorder is not None:
                        self._record_browser(event)
                    kind = type(event)
                    if kind is Stdin:
                        self.input_offset += len(event.data)  # type: ignore[union-attr]
                    elif kind is Ack:
                        assert isinstance(event, Ack)
                        if self._replay is not None:
                            self._replay.release(event.received or 0)
                        await self._send_event(Ack(input=self.input_offset))
                        continue
                    elif kind is ExtensionRequest:
                        if self._extending is not None and not self._extending.done():
                            busy = "an extension request is already being decided"
                            await self._send_event(ExtensionAnswer(False, self._remaining(), busy))
                        else:
                            self._extending = self._spawn_control(self._extend(), "extension")
                        continue
                    elif kind is Resume:
                        return Stop(
                            StopReason.BROWSER_PROTOCOL_ERROR, "resume is only a first message"
                        )
                    if (stop := await _forward(upstream, encode(event))) is not None:
                        return stop
                continue
            if msg.type is WSMsgType.ERROR and _is_too_big(msg.data):
                return Stop(StopReason.MESSAGE_TOO_BIG, str(msg.data))
            code = msg.data if msg.type is WSMsgType.CLOSE else ws.close_code
            if code == 1000 or not self.resumable:
                return Stop(StopReason.BROWSER_LEFT, f"browser closed ({code})")
            self._detach(ws, f"browser connection lost ({code})")

    # Resume ------------------------------------------------------------------------

    def _new_token(self) -> str:
        """A fresh 256-bit resume token; only its SHA-256 is kept."""
        token = secrets.token_urlsafe(32)
        self._token_hashes = [hashlib.sha256(token.encode()).digest()]
        return token

    def take_token(self, token: str) -> bytes | None:
        """Check a resume token and use it up: its hash when valid, else None."""
        digest = hashlib.sha256(token.encode()).digest()
        if not self._accepting:
            return None
        for known in self._token_hashes:
            if hmac.compare_digest(digest, known):
                self._token_hashes = []
                return known
        return None

    def restore_token(self, digest: bytes) -> None:
        """Make a taken token valid again (its resume failed on the gateway's side)."""
        if digest not in self._token_hashes:
            self._token_hashes.append(digest)

    def _detach(self, ws: web.WebSocketResponse, detail: str) -> None:
        """The attached browser is gone: keep the session for the resume grace."""
        if ws is not self._live or self._stopped.done():
            return
        loop = asyncio.get_running_loop()
        self._live = None
        self._attached.clear()
        self._detached_at = loop.time()
        grace = self._limits.resume_grace
        log.info("session %s: browser detached (%s); resumable for %gs", self.id, detail, grace)
        self._record_marker(f"browser detached ({detail})")
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        stop = Stop(StopReason.RESUME_EXPIRED, f"no resume within {grace:g}s")
        self._grace_timer = loop.call_later(grace, self.request_stop, stop)
        self._release(ws)

    async def attach(self, ws: web.WebSocketResponse, resume: Resume) -> asyncio.Future[None]:
        """Attach a resuming browser socket: hello, the missed output, then live output.

        The caller has checked the token (``take_token``) and the authorization. Any
        attached socket is closed with 4006 (taken over). Returns a future resolved when
        this socket is let go (detached, taken over, or the session ended).
        Raises SessionGone, or ProtocolError for offsets the session never had.
        """
        replay = self._replay
        if replay is None or not self._accepting:
            raise SessionGone(self.id)
        if resume.received > replay.end:
            raise ProtocolError(f"resume: received {resume.received} > produced {replay.end}")
        if resume.sent < self.input_offset:
            raise ProtocolError(f"resume: sent {resume.sent} < delivered {self.input_offset}")
        loop = asyncio.get_running_loop()
        stale = {s for s in (self._live, self._reading) if s is not None and s is not ws}
        old_hashes = self._token_hashes
        self._live = None
        self._attached.clear()
        self._not_attaching.clear()
        try:
            token = self._new_token()
            missed = replay.since(resume.received)
            hello = Hello(
                self.id,
                token,
                offset=missed.offset,
                input=self.input_offset,
                resumed=True,
                reset=missed.reset,
                expires_in=self._remaining(),
            )
            frames = list(self.browser_codec.encode(hello))
            data = missed.data
            for start in range(0, len(data), COALESCE_LIMIT):
                frames += self.browser_codec.encode(Output(data[start : start + COALESCE_LIMIT]))
            if self._pending_exit is not None:
                frames += self.browser_codec.encode(self._pending_exit)
            for opcode, frame in frames:
                await ws.send_frame(frame, WSMsgType(opcode))
                self.bytes_out += len(frame)
        except BaseException as exc:
            # The new socket failed at once (or its handler was cancelled): still
            # detached, and the browser may come back with either token.
            self._token_hashes = old_hashes + self._token_hashes
            self._detach_stale(stale)
            if isinstance(exc, ConnectionError):
                raise SessionGone(self.id) from None
            raise
        finally:
            self._not_attaching.set()
        self._pending_exit = None
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._detached_at = None
        self._live = self.browser = ws
        self._attached.set()
        self.resumes += 1
        release: asyncio.Future[None] = loop.create_future()
        self._releases.append((ws, release))
        if self._lingering is not None and not self._lingering.done():
            self._lingering.set_result(None)
        self._record_marker("resumed" + (" (the browser lost some output)" if missed.reset else ""))
        log.info(
            "session %s: resumed (offset %d, replayed %d bytes%s)",
            self.id,
            missed.offset,
            len(data),
            ", reset" if missed.reset else "",
        )
        for old in stale:
            self._release(old)
            await close_socket(old, Stop(StopReason.TAKEN_OVER), self._limits.close_timeout)
        return release

    def _detach_stale(self, stale: set[web.WebSocketResponse]) -> None:
        """After a failed attach: the session stays detached (grace timer running)."""
        if self._grace_timer is None and not self._stopped.done():
            loop = asyncio.get_running_loop()
            self._detached_at = loop.time()
            grace = self._limits.resume_grace
            stop = Stop(StopReason.RESUME_EXPIRED, f"no resume within {grace:g}s")
            self._grace_timer = loop.call_later(grace, self.request_stop, stop)
        for old in stale:
            self._release(old)

    def _release(self, ws: web.WebSocketResponse) -> None:
        keep = []
        for owner, future in self._releases:
            if owner is ws:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((owner, future))
        self._releases = keep

    def _release_all(self) -> None:
        for _, future in self._releases:
            if not future.done():
                future.set_result(None)
        self._releases = []
        if self._lingering is not None and not self._lingering.done():
            self._lingering.cancel()

    async def _linger(self) -> None:
        """The upstream ended while detached: wait out the grace for the browser to come
        back for the last output and the exit status."""
        if self._detached_at is None:
            return
        loop = asyncio.get_running_loop()
        remaining = self._detached_at + self._limits.resume_grace - loop.time()
        if remaining <= 0:
            return
        lingering: asyncio.Future[None] = loop.create_future()
        self._lingering = lingering
        self._accepting = True
        waits: list[asyncio.Future[Any]] = [lingering, self._stopped]
        try:
            await asyncio.wait(
                waits,
                timeout=remaining,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._accepting = False

    # Time limit, expiry warning, extension -----------------------------------------------

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def _schedule_deadline(self) -> None:
        assert self._deadline is not None
        loop = asyncio.get_running_loop()
        for timer in (self._limit_timer, self._warn_timer):
            if timer is not None:
                timer.cancel()
        remaining = self._deadline - loop.time()
        stop = Stop(StopReason.TIME_LIMIT, f"{self._limit_total:g}s")
        self._limit_timer = loop.call_later(remaining, self.request_stop, stop)
        warning = self._limits.expiry_warning
        if self.controls and warning > 0:
            self._warn_timer = loop.call_later(max(0.0, remaining - warning), self._warn)

    def _extendable(self) -> bool:
        # Asked when needed (a warning, a request), not per session set-up.
        offer = offer_of(self._authorizer, self._request)
        if offer is not None:
            return offer > 0 and not self._capped
        return self._limits.extension > 0 and self._extensions < self._limits.max_extensions

    def _warn(self) -> None:
        remaining = self._remaining()
        if remaining is None or self._stopped.done():
            return
        warning = ExpiryWarning(remaining, extendable=self._extendable())
        self._spawn_control(self._send_control(warning), "expiry-warning")

    def _spawn_control(self, coro: Any, what: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = spawn(coro, name=f"session-{self.id}-{what}")
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)
        return task

    async def _send_control(self, event: Event) -> None:
        await self._send_event(event)

    async def _extend(self) -> None:
        """An extension request: granted when re-authorization still allows the session."""
        answer = await self._extension_answer()
        log.info(
            "session %s: extension %s%s",
            self.id,
            "granted" if answer.granted else "refused",
            f" ({answer.reason})" if answer.reason else "",
        )
        await self._send_event(answer)

    async def _extension_answer(self) -> ExtensionAnswer:
        if self._deadline is None:
            return ExtensionAnswer(False, reason="this session has no time limit")
        # At the authorizer's ceiling, the authorizer still answers (with its reason).
        if not self._extendable() and not self._capped:
            return ExtensionAnswer(False, self._remaining(), "no extension available")
        try:
            extension = await self._authorized_extension()
        except AuthorizationError:
            return ExtensionAnswer(False, self._remaining(), "authorization unavailable")
        if extension.expires_in is None:
            return ExtensionAnswer(False, self._remaining(), extension.reason)
        if self._stopped.done() or self._deadline is None:
            return ExtensionAnswer(False, reason="session ending")
        new_deadline = asyncio.get_running_loop().time() + extension.expires_in
        added = max(0.0, new_deadline - self._deadline)
        self._capped = extension.last
        self._extensions += 1
        self._deadline += added
        self._limit_total += added
        self._schedule_deadline()
        self._record_marker(f"session extended by {round(added, 3):g}s")
        return ExtensionAnswer(True, self._remaining())

    async def _authorized_extension(self) -> Extension:
        """Re-authorization decides; an authorizer that owns the time limit (``Extender``)
        also extends it where it lives."""
        if offer_of(self._authorizer, self._request) is not None:
            return await extend_by(self._authorizer, self._request, self._grant)
        answer = await self._authorizer.reauthorize(self._request, self._grant)
        if isinstance(answer, PassBack) or answer != self._grant:
            return Extension(None, "authorization does not allow it")
        return Extension((self._remaining() or 0.0) + self._limits.extension)

    # Recording -----------------------------------------------------------------------

    def _record_output(self, data: bytes, stream: int) -> None:
        assert self._recorder is not None
        try:
            self._recorder.output(data, stream)
        except OSError as exc:
            self._recording_failed(exc)

    def _record_browser(self, event: Event) -> None:
        assert self._recorder is not None
        try:
            if type(event) is Stdin:
                self._recorder.input(event.data)
            elif type(event) is Resize:
                self._recorder.resize(event.width, event.height)
        except OSError as exc:
            self._recording_failed(exc)

    def _record_marker(self, label: str) -> None:
        if self._recorder is None:
            return
        try:
            self._recorder.marker(label)
        except OSError as exc:
            self._recording_failed(exc)

    def _recording_failed(self, exc: OSError) -> None:
        """``required``: the session ends (4011); ``best_effort``: recording stops, audited."""
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        recorder.abandon()
        self.recording_failure = f"{type(exc).__name__}: {exc.strerror or exc}"
        log.warning("session %s: recording failed: %s", self.id, self.recording_failure)
        if recorder.settings.required:
            self.request_stop(Stop(StopReason.RECORDING_FAILED, self.recording_failure))
        elif self._audit is not None:
            fields: dict[str, object] = {"session": self.id, "recording": recorder.path.name}
            self._audit("recording_failed", fields | {"error": self.recording_failure})

    def _finish_recording(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        stop = self.stop
        end: dict[str, Any] = {
            "session": self.id,
            "user": self._grant.user,
            "target": self._grant.details.target.describe(),
            "exit_code": None if self.exit is None else self.exit.code,
            "stop": None if stop is None else stop.reason.value,
            "stop_detail": None if stop is None else stop.detail,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "resumes": self.resumes,
            "extensions": self._extensions,
            "duration_s": round(time.monotonic() - self.started, 3),
        }
        try:
            recorder.finish(end)
        except OSError as exc:
            self._recorder = recorder
            self._recording_failed(exc)

    # Stoppers ----------------------------------------------------------------------

    async def _stop_stoppers(self) -> None:
        for timer in (
            self._limit_timer,
            self._idle_timer,
            self._poll_timer,
            self._warn_timer,
            self._grace_timer,
        ):
            if timer is not None:
                timer.cancel()
        if self._poll is not None:
            await cancel_and_wait([self._poll])
        await cancel_and_wait(list(self._control_tasks))

    def _check_idle(self) -> None:
        idle = self._limits.idle_timeout
        remaining = self._last_activity + idle - asyncio.get_running_loop().time()
        if remaining <= 0:
            self.request_stop(Stop(StopReason.IDLE, f"no traffic for {idle:g}s"))
        else:
            self._idle_timer = asyncio.get_running_loop().call_later(remaining, self._check_idle)

    def _schedule_poll(self) -> None:
        limits = self._limits
        jitter = 1 + random.uniform(-limits.poll_jitter, limits.poll_jitter)  # noqa: S311
        loop = asyncio.get_running_loop()
        self._poll_timer = loop.call_later(limits.poll_interval * jitter, self._start_poll)

    def _start_poll(self) -> None:
        if self._stopped.done():
            return
        self._poll = spawn(self._poll_once(), name=f"session-{self.id}-repoll")
        self._poll.add_done_callback(self._poll_done)

    def _poll_done(self, task: asyncio.Task[Stop | None]) -> None:
        if task.cancelled():
            return
        self._poll = None
        exc = task.exception()
        if exc is not None:
            log.error("session task %s crashed", task.get_name(), exc_info=exc)
            self.request_stop(Stop(StopReason.INTERNAL, type(exc).__name__))
        elif (stop := task.result()) is not None:
            self.request_stop(stop)
        elif not self._stopped.done():
            self._schedule_poll()

    async def _poll_once(self) -> Stop | None:
        """Re-ask the authorization API; compare what it says with the original grant."""
        limits = self._limits
        try:
            answer = await self._authorizer.reauthorize(self._request, self._grant)
        except AuthorizationError as exc:
            self._poll_failures += 1
            log.warning(
                "session %s: re-authorization failed (%d/%d): %s",
                self.id,
                self._poll_failures,
                limits.poll_failure_grace,
                exc.detail,
            )
            if self._poll_failures >= limits.poll_failure_grace:
                return Stop(StopReason.AUTH_UNAVAILABLE, exc.public)
            return None
        if isinstance(answer, PassBack):
            if answer.status >= 500:
                self._poll_failures += 1
                log.warning(
                    "session %s: re-authorization answered %d (%d/%d)",
                    self.id,
                    answer.status,
                    self._poll_failures,
                    limits.poll_failure_grace,
                )
                if self._poll_failures >= limits.poll_failure_grace:
                    return Stop(StopReason.AUTH_UNAVAILABLE, f"status {answer.status}")
                return None
            return Stop(StopReason.REVOKED, f"authorization answered {answer.status}")
        if answer != self._grant:
            return Stop(StopReason.CHANGED, "re-authorization returned other details")
        self._poll_failures = 0
        return None

    # Closing -------------------------------------------------------------------------

    async def _close(self, stop: Stop) -> None:
        """Close both sockets with the stop's codes, concurrently, within close_timeout."""
        await asyncio.gather(self._close_upstream(stop), self._close_browser(stop))

    async def _close_upstream(self, stop: Stop) -> None:
        ws = self.upstream
        if ws.closed:
            return
        try:
            async with asyncio.timeout(self._limits.close_timeout):
                if stop.reason is not StopReason.UPSTREAM_FAILED:
                    # Tell the process its input ended (v5 close signal, or EOT like
                    # Workhorse) so the exec'd shell exits rather than lingering.
                    for opcode, data in self.upstream_codec.encode(StdinClosed()):
                        await ws.send_frame(data, WSMsgType(opcode))
                await ws.close(code=stop.upstream_code, message=_reason_bytes(stop.reason.value))
        except (TimeoutError, ConnectionError):
            pass

    async def _close_browser(self, stop: Stop) -> None:
        ws = self._live if self.resumable else self.browser
        if ws is None or ws.closed:
            return
        try:
            async with asyncio.timeout(self._limits.close_timeout):
                await ws.close(code=stop.browser_code, message=_reason_bytes(stop.browser_reason))
        except (TimeoutError, ConnectionError):
            pass


async def close_socket(ws: web.WebSocketResponse, stop: Stop, close_timeout: float) -> None:
    """Close one browser socket with ``stop``'s code and reason, within ``timeout``."""
    if ws.closed:
        return
    try:
        async with asyncio.timeout(close_timeout):
            await ws.close(code=stop.browser_code, message=_reason_bytes(stop.browser_reason))
    except (TimeoutError, ConnectionError):
        pass


def _first_stop(pumps: list[asyncio.Task[Stop]], stopped: asyncio.Future[Stop]) -> Stop:
    """The pumps' verdict first (what the peers did), then the stoppers'."""
    for task in pumps:
        if task.done():
            exc = task.exception()
            if exc is not None:
                log.error("session task %s crashed", task.get_name(), exc_info=exc)
                return Stop(StopReason.INTERNAL, type(exc).__name__)
            return task.result()
    return stopped.result()


def _min_positive(*values: float) -> float:
    positive = [v for v in values if v > 0]
    return min(positive) if positive else 0.0


async def _forward(upstream: ClientWebSocketResponse, frames: Sequence[Frame]) -> Stop | None:
    """Send one event's frames upstream; a Stop when the upstream is gone."""
    for opcode, data in frames:
        try:
            await upstream.send_frame(data, WSMsgType(opcode))
        except ConnectionError:
            return Stop(StopReason.UPSTREAM_FAILED, "upstream connection lost")
    return None


def _is_too_big(exc: Any) -> bool:
    return getattr(exc, "code", None) == 1009


def _truncate(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def _reason_bytes(text: str) -> bytes:
    return _truncate(text, 123).encode()
