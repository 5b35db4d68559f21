"""The relay: one upstream, its browser links, two pumps and the stoppers, in one place.

``Session.run()`` starts the one pump (``pump.py``) both ways: upstream → browsers and
the owner's browser → upstream. The stoppers (time limit, idle timeout, re-poll, server
shutdown) are loop timers (``timers.py``) that resolve one future. The first pump to
finish, or else that future, decides the ``Stop``; everything else is cancelled and
awaited; then both sides are closed on purpose, each with the code and reason of
``docs/close-codes.md``. Bytes the upstream sent before it closed have all been written to
the browser before the browser's close frame, because the upstream pump only returns
after the upstream's close frame and writes in order (output it gathered to coalesce is
flushed first).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, WSMsgType

from ..authorization import Authorizer, BrowserRequest, Grant
from ..observability import SessionEnd, ended_fields
from ..protocols import (
    TERMINAL_PROXY,
    Ack,
    Codec,
    Event,
    Exit,
    ExpiryWarning,
    ExtensionRequest,
    Output,
    ProtocolError,
    Resume,
    Stdin,
    StdinClosed,
)
from ..replay import ReplayBudget
from ..tasks import cancel_and_wait, spawn
from .extension import ExtensionDesk
from .links import COALESCE_LIMIT, BrowserLink, DirectLink, LinkSet, ResumableLink
from .pump import pump
from .recording import RecordingTap
from .sockets import Socket, Traffic, parsed_queue
from .stop import LINGER, Stop, StopReason, reason_bytes
from .timers import Deadline, IdleTimer, Repoller

__all__ = ["Session", "SessionLimits"]

log = logging.getLogger("terminal_proxy.session")

_K8S_V1 = frozenset({"channel.k8s.io", "base64.channel.k8s.io"})
_BROWSER_GONE = Stop(StopReason.BROWSER_LEFT, "browser connection lost")


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


class Session:
    """One relayed terminal: an upstream socket, its browser links, the stoppers."""

    def __init__(
        self,
        *,
        session_id: str,
        browser: Socket,
        browser_codec: Codec,
        upstream: Socket,
        upstream_codec: Codec,
        authorizer: Authorizer,
        request: BrowserRequest,
        grant: Grant,
        limits: SessionLimits,
        shutdown: asyncio.Event,
        replay_budget: ReplayBudget | None = None,
    ) -> None:
        self.id = session_id
        loop = asyncio.get_running_loop()
        # Resolved when run() has closed both sides (waited on by the drain).
        self.done: asyncio.Future[None] = loop.create_future()
        # Set by the stoppers (timers, re-poll, shutdown) with their verdict.
        self._stopped: asyncio.Future[Stop] = loop.create_future()
        self.upstream = upstream
        self.upstream_codec = upstream_codec
        self.request = request
        self.grant = grant
        self.limits = limits
        self._shutdown = shutdown
        self.traffic = traffic = Traffic()
        # v1.terminal-proxy: control messages (expiry warnings, extensions), and resume
        # when resume_grace is set.
        self.controls = browser_codec.name == TERMINAL_PROXY
        # The owner's link when it can be resumed (a later socket attaches to it).
        self.resume: ResumableLink | None = None
        owner: BrowserLink
        if self.controls and limits.resume_grace > 0:
            owner = self.resume = ResumableLink(
                browser,
                browser_codec,
                session_id=session_id,
                traffic=traffic,
                grace=limits.resume_grace,
                buffer=limits.resume_buffer,
                budget=replay_budget,
                close_timeout=limits.close_timeout,
                expire=self.request_stop,
                stopping=self._stopping,
                marker=self.marker,
            )
        else:
            owner = DirectLink(browser, browser_codec, traffic, limits.close_timeout)
        self.links = LinkSet(owner)
        # The process's exit as the upstream reported it, once it has.
        self.exit: Exit | None = None
        # How the upstream closed, when it did: (code, reason).
        self.upstream_close: tuple[int | None, str] | None = None
        self.started = time.monotonic()
        # Why the session ended, once it has.
        self.stop: Stop | None = None
        self.deadline: Deadline | None = None
        self._idle: IdleTimer | None = None
        self._repoller = Repoller(
            lambda: authorizer.reauthorize(request, grant),
            grant,
            interval=limits.poll_interval,
            jitter=limits.poll_jitter,
            failure_grace=limits.poll_failure_grace,
            expire=self.request_stop,
            stopping=self._stopping,
            session_id=session_id,
        )
        self._extensions = ExtensionDesk(
            authorizer,
            request,
            grant,
            extension=limits.extension,
            max_extensions=limits.max_extensions,
        )
        self._control_tasks: set[asyncio.Task[None]] = set()
        # Recording (docs/recording.md), when the session is recorded.
        self.recording: RecordingTap | None = None

    def _stopping(self) -> bool:
        return self._stopped.done()

    @property
    def browser(self) -> Socket:
        """The owner's latest browser socket."""
        return self.links.owner.latest

    @property
    def detached(self) -> bool:
        return self.links.owner.detached

    def shut_down(self) -> None:
        """End the session with 1001 "server shutting down" (the drain calls this)."""
        self.request_stop(Stop(StopReason.SHUTDOWN, "server shutting down"))

    def request_stop(self, stop: Stop) -> None:
        """Ask the session to end with ``stop`` (the first request wins; pumps win ties)."""
        if not self._stopped.done():
            self._stopped.set_result(stop)

    def remaining(self) -> float | None:
        """Seconds left of the time limit, or None when there is none."""
        return None if self.deadline is None else self.deadline.remaining()

    def marker(self, label: str) -> None:
        if self.recording is not None:
            self.recording.marker(label)

    async def run(self) -> Stop:
        """Relay until the first stopper fires; close both sides; return why."""
        try:
            return await self._run()
        finally:
            if self.recording is not None:
                target = self.grant.details.target.describe()
                self.recording.finish(ended_fields(self.summary()) | {"target": target})
            if not self.done.done():
                self.done.set_result(None)

    async def _run(self) -> Stop:
        # Two tasks per session, the pumps; the stoppers are timers on the loop and a
        # future, so an idle session costs little memory (docs/performance.md).
        loop = asyncio.get_running_loop()
        limits, traffic = self.limits, self.traffic
        traffic.last_activity = loop.time()
        if self._shutdown.is_set():
            self.shut_down()
        limit = _min_positive(self.grant.details.max_session_time, limits.max_duration)
        if limit:
            warn = self._warn if self.controls else None
            self.deadline = Deadline(
                limit, expire=self.request_stop, warning=limits.expiry_warning, warn=warn
            )
        await self.links.owner.open(self.remaining())
        owner = self.links.owner
        tasks: list[asyncio.Task[Stop]] = [
            spawn(
                pump(
                    self.upstream.receive,
                    self.upstream_codec,
                    _BrowserSide(self),
                    traffic,
                    queued=parsed_queue(self.upstream),
                ),
                name=f"session-{self.id}-upstream-to-browser",
            ),
            spawn(
                pump(owner.receive, owner.codec, _UpstreamSide(self), traffic, inbound=True),
                name=f"session-{self.id}-browser-to-upstream",
            ),
        ]
        if limits.idle_timeout:
            self._idle = IdleTimer(limits.idle_timeout, traffic, self.request_stop)
        if limits.poll_interval:
            self._repoller.start()
        try:
            await asyncio.wait([*tasks, self._stopped], return_when=asyncio.FIRST_COMPLETED)
            self.stop = _first_stop(tasks, self._stopped)
        except asyncio.CancelledError:
            # The server cancelled the handler: its connection to the browser is gone
            # (aiohttp's handler_cancellation) or it is shutting down for good.
            if owner.latest.closed or not self._shutdown.is_set():
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
        owner = self.links.owner
        lingers = owner.detached and stop.reason in LINGER and not self._stopped.done()
        self.links.begin_end()
        await self._stop_stoppers()
        await cancel_and_wait(others)
        try:
            if lingers:
                await self._close_upstream(stop)
                await owner.linger(self._stopped)
            await asyncio.gather(self._close_upstream(stop), self.links.close(stop))
        finally:
            await cancel_and_wait([upstream_pump])
            self.links.finish()

    async def _stop_stoppers(self) -> None:
        for timer in (self.deadline, self._idle):
            if timer is not None:
                timer.cancel()
        await self._repoller.stop()
        await cancel_and_wait(list(self._control_tasks))

    async def _close_upstream(self, stop: Stop) -> None:
        ws = self.upstream
        if ws.closed:
            return
        try:
            async with asyncio.timeout(self.limits.close_timeout):
                if stop.reason is not StopReason.UPSTREAM_FAILED:
                    # Tell the process its input ended (v5 close signal, or EOT like
                    # Workhorse) so the exec'd shell exits rather than lingering.
                    for opcode, data in self.upstream_codec.encode(StdinClosed()):
                        await ws.send_frame(data, WSMsgType(opcode))
                await ws.close(code=stop.upstream_code, message=reason_bytes(stop.reason.value))
        except (TimeoutError, ConnectionError):
            pass

    async def upstream_ended(self, msg: WSMessage) -> Stop:
        """The upstream's close (or failure), turned into the session's verdict."""
        kind, data = msg.type, msg.data
        if kind is WSMsgType.CLOSING:
            # Our own close() woke this receive(): the session is already ending.
            return Stop(StopReason.UPSTREAM_CLOSED, "closed by the gateway")
        # A CLOSE message carries the peer's own code; ws.close_code may already say 1006
        # when our automatic close reply could not be written (the peer hung up first).
        closed = kind is WSMsgType.CLOSE and isinstance(data, int)
        code = data if closed else self.upstream.close_code
        reason = msg.extra if isinstance(msg.extra, str) else ""
        self.upstream_close = (code, reason)
        if kind is WSMsgType.ERROR:
            return Stop(StopReason.UPSTREAM_FAILED, f"{type(data).__name__}: {data}")
        if code in (1000, 1001):
            if self.exit is None and self.upstream_codec.name in _K8S_V1 and code == 1000:
                # channel.k8s.io v1 writes the error stream only on failure: a clean close
                # without one is success.
                self.exit = Exit(0)
                if not await self.links.send_event(self.exit):
                    return _BROWSER_GONE
            if self.exit is not None:
                exit_code = self.exit.code
                if exit_code is None:
                    return Stop(StopReason.UPSTREAM_FAILED, self.exit.message or "command failed")
                return Stop(StopReason.EXITED, self.exit.message, exit_code=exit_code)
            return Stop(StopReason.UPSTREAM_CLOSED, f"upstream closed ({code})")
        if code is None or code == 1006:
            return Stop(StopReason.UPSTREAM_FAILED, "connection lost")
        return Stop(StopReason.UPSTREAM_FAILED, f"closed with {code} {reason}".strip())

    # Expiry warning and extensions (v1.terminal-proxy) ----------------------------------

    def _warn(self) -> None:
        if self.deadline is None or self._stopped.done():
            return
        extendable = self._extensions.extendable(self.deadline)
        warning = ExpiryWarning(self.deadline.remaining(), extendable=extendable)
        self._spawn_control(self._send_control(warning), "expiry-warning")

    def request_extension(self) -> None:
        self._spawn_control(self._extend(), "extension")

    def _spawn_control(self, coro: Any, what: str) -> None:
        task: asyncio.Task[None] = spawn(coro, name=f"session-{self.id}-{what}")
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _send_control(self, event: Event) -> None:
        await self.links.send_event(event)

    async def _extend(self) -> None:
        answer, added = await self._extensions.answer(self.deadline, self._stopped.done)
        if answer.granted:
            self.marker(f"session extended by {round(added, 3):g}s")
        fields: dict[str, object] = {"session": self.id, "granted": answer.granted}
        if answer.reason:
            fields["reason"] = answer.reason
        log.info("extension", extra={"fields": fields})
        await self.links.send_event(answer)

    def summary(self) -> SessionEnd:
        """How the session ended, for its log line, audit event and recording."""
        stop = self.stop or Stop(StopReason.INTERNAL, "session did not record a stop")
        return SessionEnd(
            stop=stop,
            exit_code=stop.exit_code if self.exit is None else self.exit.code,
            browser_close=self.browser.close_code,
            upstream_close=self.upstream.close_code,
            bytes_in=self.traffic.bytes_in,
            bytes_out=self.traffic.bytes_out,
            duration_s=time.monotonic() - self.started,
            resumes=self.links.owner.resumes,
            extensions=0 if self.deadline is None else self.deadline.extensions,
        )


class _BrowserSide:
    """Upstream → browsers: output coalesced, recorded, then sent to every link."""

    __slots__ = ("_chunks", "_session", "_size", "_stream")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._chunks: list[bytes] = []
        self._size = 0
        self._stream = 0

    async def output(self, data: bytes, stream: int, more: bool) -> Stop | None:
        flush = self._chunks and (stream != self._stream or self._size >= COALESCE_LIMIT)
        if flush and not await self._flush():
            return _BROWSER_GONE
        self._stream = stream
        self._chunks.append(data)
        self._size += len(data)
        if (self._size >= COALESCE_LIMIT or not more) and not await self._flush():
            return _BROWSER_GONE
        return None

    async def settle(self, more: bool) -> Stop | None:
        flush = self._chunks and (self._size >= COALESCE_LIMIT or not more)
        if flush and not await self._flush():
            return _BROWSER_GONE
        return None

    async def event(self, event: Event) -> Stop | None:
        if self._chunks and not await self._flush():
            return _BROWSER_GONE
        session = self._session
        if type(event) is Exit:
            session.exit = event
        if not await session.links.send_event(event):
            return _BROWSER_GONE
        return None

    async def closed(self, msg: WSMessage) -> Stop:
        # Whatever was gathered goes out before the close is acted on.
        if self._chunks and not await self._flush():
            return _BROWSER_GONE
        return await self._session.upstream_ended(msg)

    async def bad_frame(self, exc: ProtocolError) -> Stop:
        if self._chunks and not await self._flush():
            return _BROWSER_GONE
        return Stop(StopReason.UPSTREAM_FAILED, f"invalid frame from upstream: {exc}")

    async def _flush(self) -> bool:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks, self._size = [], 0
        session = self._session
        if session.recording is not None:
            session.recording.output(data, self._stream)
        return await session.links.send_output(data, self._stream)


class _UpstreamSide:
    """The owner's browser → upstream: input forwarded, control messages answered here."""

    __slots__ = ("_encode", "_session", "_upstream")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._upstream = session.upstream
        self._encode = session.upstream_codec.encode

    async def output(self, data: bytes, stream: int, more: bool) -> Stop | None:
        return await self._forward(Output(data, stream))

    async def settle(self, more: bool) -> Stop | None:
        return None

    async def event(self, event: Event) -> Stop | None:
        session = self._session
        if session.recording is not None:
            session.recording.browser(event)
        kind = type(event)
        if kind is Stdin:
            session.traffic.input_offset += len(event.data)  # type: ignore[union-attr]
        elif kind is Ack:
            received = event.received  # type: ignore[union-attr]
            session.links.owner.acked(received or 0)
            await session.links.owner.send_event(Ack(input=session.traffic.input_offset))
            return None
        elif kind is ExtensionRequest:
            session.request_extension()
            return None
        elif kind is Resume:
            return Stop(StopReason.BROWSER_PROTOCOL_ERROR, "resume is only a first message")
        return await self._forward(event)

    async def closed(self, msg: WSMessage) -> Stop:
        return self._session.links.owner.left(msg)

    async def bad_frame(self, exc: ProtocolError) -> Stop:
        return Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc))

    async def _forward(self, event: Event) -> Stop | None:
        """Send one event's frames upstream; a Stop when the upstream is gone."""
        for opcode, data in self._encode(event):
            try:
                await self._upstream.send_frame(data, WSMsgType(opcode))
            except ConnectionError:
                return Stop(StopReason.UPSTREAM_FAILED, "upstream connection lost")
        return None


def _first_stop(pumps: list[asyncio.Task[Stop]], stopped: asyncio.Future[Stop]) -> Stop:
    """The pumps' verdict first (what the peers did), then the stoppers'."""
    for task in pumps:
        if task.done():
            exc = task.exception()
            if exc is not None:
                log.error(
                    "session task crashed",
                    exc_info=exc,
                    extra={"fields": {"task": task.get_name()}},
                )
                return Stop(StopReason.INTERNAL, type(exc).__name__)
            return task.result()
    return stopped.result()


def _min_positive(*values: float) -> float:
    positive = [v for v in values if v > 0]
    return min(positive) if positive else 0.0
