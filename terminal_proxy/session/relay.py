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
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType

from ..authorization import Authorizer, BrowserRequest, Grant
from ..config import AuthorizationConfig, SessionConfig
from ..observability import SessionEnd, ended_fields
from ..protocols import (
    TERMINAL_PROXY,
    Codec,
    Event,
    Exit,
    ExpiryWarning,
    ShareRequest,
    SharingNotice,
    Stdin,
    StdinClosed,
)
from ..replay import ReplayBudget
from ..tasks import cancel_and_wait, spawn
from .extension import ExtensionDesk
from .links import BrowserLink, DirectLink, LinkSet
from .pump import pump
from .recording import RecordingTap
from .resumable import ResumableLink
from .sharing import Sharing
from .sides import BrowserSide, UpstreamSide
from .sockets import Socket, Traffic, parsed_queue
from .stop import LINGER, Stop, StopReason, reason_bytes
from .timers import Deadline, IdleTimer, Repoller

__all__ = ["Session"]

log = logging.getLogger("terminal_proxy.session")


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
        limits: SessionConfig,
        polling: AuthorizationConfig,
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
        self.resume = self._resumable(browser, browser_codec, replay_budget)
        owner: BrowserLink = self.resume or DirectLink(
            browser, browser_codec, traffic, limits.close_timeout
        )
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
            interval=polling.poll_interval,
            jitter=polling.poll_jitter,
            failure_grace=polling.poll_failure_grace,
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
        # The owner's terminal size (its latest resize).
        self.size = (80, 24)
        # Shared terminals (docs/sharing.md): set up on the first invitation or join.
        self.sharing: Sharing | None = None
        self.max_participants = 0
        self.audit: Callable[[str, dict[str, object]], None] = _no_audit
        self.participants_counted: Callable[[int], None] = _no_count

    def _stopping(self) -> bool:
        return self._stopped.done()

    def _resumable(
        self, browser: Socket, codec: Codec, budget: ReplayBudget | None
    ) -> ResumableLink | None:
        limits = self.limits
        if not (self.controls and limits.resume_grace > 0):
            return None
        return ResumableLink(
            browser,
            codec,
            session_id=self.id,
            traffic=self.traffic,
            grace=limits.resume_grace,
            buffer=limits.resume_buffer,
            budget=budget,
            close_timeout=limits.close_timeout,
            expire=self.request_stop,
            stopping=self._stopping,
            marker=self.marker,
        )

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
                meta = ended_fields(self.summary()) | {"target": target}
                if self.sharing is not None:
                    meta["participants"] = self.sharing.history
                self.recording.finish(meta)
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
                    BrowserSide(self),
                    traffic,
                    queued=parsed_queue(self.upstream),
                ),
                name=f"session-{self.id}-upstream-to-browser",
            ),
            spawn(
                pump(owner.receive, owner.codec, UpstreamSide(self), traffic, inbound=True),
                name=f"session-{self.id}-browser-to-upstream",
            ),
        ]
        if limits.idle_timeout:
            self._idle = IdleTimer(limits.idle_timeout, traffic, self.request_stop)
        if self._repoller.interval:
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

    # Shared terminals (docs/sharing.md) ------------------------------------------------

    def resized(self, cols: int, rows: int) -> bool:
        """The owner's resize: False when it must not reach the upstream (a writer
        controls the size)."""
        self.size = (cols, rows)
        return self.sharing is None or self.sharing.owner_resized(cols, rows)

    def share(self) -> Sharing | None:
        """The session's sharing, set up on first use; None when it cannot be shared
        (no resume: a shared session needs the replay to seed its screen model)."""
        if self.sharing is not None or self.resume is None or not self.max_participants:
            return self.sharing
        from ..screen import ScreenModel  # pyte: only for sessions that are shared

        model = ScreenModel(*self.size)
        _start, kept = self.resume.kept_output()
        model.feed(kept)
        owner = self.links.owner
        self.sharing = Sharing(
            session_id=self.id,
            owner_user=self.grant.user or "-",
            model=model,
            offset=self.resume.produced,
            max_participants=self.max_participants,
            buffer=self.limits.max_buffer,
            close_timeout=self.limits.close_timeout,
            grace=self.limits.resume_grace,
            to_owner=owner.send_event,
            to_upstream=self._to_upstream,
            audit=self.audit,
            counted=self.participants_counted,
        )
        self.links.add(self.sharing)
        self.marker("sharing started")
        return self.sharing

    def share_request(self, request: ShareRequest) -> None:
        sharing = self.share()
        if sharing is None:
            notice = SharingNotice(
                "refused",
                (("request", request.request), ("reason", "this session cannot be shared")),
            )
            self._spawn_control(self._send_control(notice), "sharing")
            return
        self._spawn_control(sharing.from_owner(request), "sharing")

    async def _to_upstream(self, event: Event) -> bool:
        """A writer's input or the size controller's resize, to the upstream."""
        if type(event) is Stdin:
            self.traffic.bytes_in += len(event.data)
            self.traffic.last_activity = asyncio.get_running_loop().time()
            if self.recording is not None:
                self.recording.browser(event)
        for opcode, data in self.upstream_codec.encode(event):
            try:
                await self.upstream.send_frame(data, WSMsgType(opcode))
            except ConnectionError:
                return False
        return True

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


def _no_audit(kind: str, fields: dict[str, object]) -> None:
    pass


def _no_count(change: int) -> None:
    pass


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
