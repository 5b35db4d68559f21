"""The stoppers that run on the clock: the time limit, the idle timeout, the re-poll.

Each one is loop timers (a task only while a re-poll is asking) and ends the session the
same way, by handing its ``Stop`` to ``expire`` (``Session.request_stop``). None of them
touches a socket. The re-poll is Workhorse's auth checker: a ``reauthorize`` function
asked every interval (with jitter), its answer compared with the session's grant.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from ..authorization import Grant, PassBack
from ..errors import AuthorizationError
from ..tasks import cancel_and_wait, spawn
from .sockets import Traffic
from .stop import Stop, StopReason, ended, no_stop

__all__ = ["Deadline", "IdleTimer", "Repoller"]

log = logging.getLogger("terminal_proxy.session")

Expire = Callable[[Stop], None]


class Deadline:
    """A session's time limit: its end, a warning ``warning`` seconds before it (when
    ``warn`` is given), and the extensions granted so far."""

    __slots__ = (
        "_at",
        "_end_timer",
        "_expire",
        "_warn",
        "_warn_timer",
        "_warning",
        "capped",
        "extensions",
        "total",
    )

    def __init__(
        self, limit: float, *, expire: Expire, warning: float = 0.0, warn: Callable[[], None] | None
    ) -> None:
        self._at = asyncio.get_running_loop().time() + limit
        self._expire = expire
        self._warning = warning
        self._warn = warn
        self._end_timer: asyncio.TimerHandle | None = None
        self._warn_timer: asyncio.TimerHandle | None = None
        # Seconds of limit in all (the first limit plus what extensions added).
        self.total = limit
        self.extensions = 0
        # The authorizer's ceiling was reached: no further extension is possible.
        self.capped = False
        self._schedule()

    def remaining(self) -> float:
        return max(0.0, self._at - asyncio.get_running_loop().time())

    def extend(self, expires_in: float, *, last: bool) -> float:
        """Move the end to ``expires_in`` seconds from now (never earlier); the seconds
        added. ``last``: the authorizer allows no further extension."""
        new_end = asyncio.get_running_loop().time() + expires_in
        added = max(0.0, new_end - self._at)
        self.capped = last
        self.extensions += 1
        self._at += added
        self.total += added
        self._schedule()
        return added

    def _schedule(self) -> None:
        self.cancel()
        loop = asyncio.get_running_loop()
        remaining = self._at - loop.time()
        stop = Stop(StopReason.TIME_LIMIT, f"{self.total:g}s")
        self._end_timer = loop.call_later(remaining, self._expire, stop)
        if self._warn is not None and self._warning > 0:
            self._warn_timer = loop.call_later(max(0.0, remaining - self._warning), self._warn)

    def cancel(self) -> None:
        for timer in (self._end_timer, self._warn_timer):
            if timer is not None:
                timer.cancel()


class IdleTimer:
    """Ends the session after ``timeout`` seconds without a data frame either way."""

    __slots__ = ("_expire", "_timeout", "_timer", "_traffic")

    def __init__(self, timeout: float, traffic: Traffic, expire: Expire) -> None:
        self._timeout = timeout
        self._traffic = traffic
        self._expire = expire
        self._timer = asyncio.get_running_loop().call_later(timeout, self._check)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        remaining = self._traffic.last_activity + self._timeout - loop.time()
        if remaining <= 0:
            self._expire(Stop(StopReason.IDLE, f"no traffic for {self._timeout:g}s"))
        else:
            self._timer = loop.call_later(remaining, self._check)

    def cancel(self) -> None:
        self._timer.cancel()


class Repoller:
    """Re-asks the authorization every ``interval`` seconds (± ``jitter``) and ends the
    session when access is revoked (4001), the details change (4002), or the API fails
    ``failure_grace`` times in a row (4003)."""

    def __init__(
        self,
        reauthorize: Callable[[], Awaitable[Grant | PassBack]],
        grant: Grant,
        *,
        interval: float,
        jitter: float,
        failure_grace: int,
        expire: Expire,
        stopping: Callable[[], bool],
        session_id: str,
    ) -> None:
        self._reauthorize = reauthorize
        self._grant = grant
        self.interval = interval
        self._jitter = jitter
        self._failure_grace = failure_grace
        self._expire = expire
        self._stopping = stopping
        self._session_id = session_id
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Stop | None] | None = None
        self.failures = 0

    def start(self) -> None:
        jitter = 1 + random.uniform(-self._jitter, self._jitter)  # noqa: S311
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.interval * jitter, self._ask)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            await cancel_and_wait([self._task])
        # Stopped, it asks nothing more and lets go of the session (stop.py, no_stop).
        self._reauthorize = _stopped
        self._expire = no_stop
        self._stopping = ended

    def _ask(self) -> None:
        if self._stopping():
            return
        self._task = spawn(self.once(), name=f"session-{self._session_id}-repoll")
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Stop | None]) -> None:
        if task.cancelled():
            return
        self._task = None
        exc = task.exception()
        if exc is not None:
            log.error(
                "session task crashed", exc_info=exc, extra={"fields": {"task": task.get_name()}}
            )
            self._expire(Stop(StopReason.INTERNAL, type(exc).__name__))
        elif (stop := task.result()) is not None:
            self._expire(stop)
        elif not self._stopping():
            self.start()

    async def once(self) -> Stop | None:
        """Ask once; the verdict, or None when the session goes on."""
        try:
            answer = await self._reauthorize()
        except AuthorizationError as exc:
            return self._failed(exc.detail, exc.public)
        if isinstance(answer, PassBack):
            if answer.status >= 500:
                return self._failed(f"status {answer.status}", f"status {answer.status}")
            return Stop(StopReason.REVOKED, f"authorization answered {answer.status}")
        if answer != self._grant:
            return Stop(StopReason.CHANGED, "re-authorization returned other details")
        self.failures = 0
        return None

    def _failed(self, detail: str, public: str) -> Stop | None:
        self.failures += 1
        log.warning(
            "re-authorization failed",
            extra={
                "fields": {
                    "session": self._session_id,
                    "failures": f"{self.failures}/{self._failure_grace}",
                    "error": detail,
                }
            },
        )
        if self.failures >= self._failure_grace:
            return Stop(StopReason.AUTH_UNAVAILABLE, public)
        return None


async def _stopped() -> Grant | PassBack:
    raise RuntimeError("re-poller stopped")
