"""The gateway's sessions: live ones, resumable ones by id, recently ended ids, per-user
counts and the handshakes in flight.

One ``Registry`` per gateway. The handshake holds a ``Slot`` from ``admit()`` for its
user from authorization on; a failed handshake releases it (``with slot:``), a session
keeps it until it ends (``Registry.remove``). Limits refused here are ``LimitReached``
errors: the handler answers them 503/429 with Retry-After (docs/close-codes.md).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from .errors import LimitReached
from .session.stop import Stop, StopReason

if TYPE_CHECKING:
    from .session.relay import Session

__all__ = ["ENDED_KEPT", "LOCAL", "Claim", "LocalCounts", "Registry", "SharedCounts", "Slot"]

# How many ended session ids the gateway remembers, to answer a late resume precisely.
ENDED_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Claim:
    """One session's claim on the limits: what a shared count admits and releases."""

    session_id: str
    user_key: str
    route: str
    # limits.max_sessions and limits.max_sessions_per_user (0: no limit).
    max_sessions: int
    max_per_user: int


class SharedCounts(Protocol):
    """Counts beyond this gateway (the cluster's). ``admit`` raises ``LimitReached`` when
    a limit is reached (or the count cannot be reached and that refuses); ``release`` must
    not wait (it runs when a session ends; the work happens off the hot path)."""

    async def admit(self, claim: Claim) -> None: ...

    def release(self, claim: Claim) -> None: ...

    async def settle(self) -> None:
        """Wait (briefly) until the releases so far count in the shared count."""
        ...


class LocalCounts:
    """No shared count: this gateway's own limits are the only ones (single replica)."""

    __slots__ = ()

    async def admit(self, claim: Claim) -> None:
        return None

    def release(self, claim: Claim) -> None:
        return None

    async def settle(self) -> None:
        return None


LOCAL = LocalCounts()


class Slot:
    """One of a user's session slots: held from authorization to the session's end."""

    __slots__ = ("_counts", "_held", "_on_release", "user_key")

    def __init__(
        self,
        counts: Counter[str],
        user_key: str,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        self._counts = counts
        self.user_key = user_key
        self._on_release = on_release
        counts[user_key] += 1
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._on_release is not None:
            self._on_release()
        self._counts[self.user_key] -= 1
        if self._counts[self.user_key] <= 0:
            del self._counts[self.user_key]

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """A handshake that fails inside ``with slot:`` gives the slot back."""
        if kind is not None:
            self.release()


class Registry:
    """Every session of one gateway, and the counts its limits are checked against."""

    def __init__(self, shared: SharedCounts = LOCAL) -> None:
        # The cluster's counts (LOCAL: this gateway's limits only).
        self.shared = shared
        # Live sessions, for limits and shutdown.
        self.live: set[Session] = set()
        # v1.terminal-proxy sessions that can be resumed, by id (attached or not).
        self.resumable: dict[str, Session] = {}
        # Recently ended session ids and why (a late resume gets a precise answer).
        self.ended: OrderedDict[str, StopReason] = OrderedDict()
        # Sessions (and handshakes past authorization) per user key.
        self.per_user: Counter[str] = Counter()
        # Handshakes between request and upgrade (resumes: until attached or refused), and
        # how many of them are resumes (which may add no session).
        self.pending = 0
        self.resuming = 0
        self._slots: dict[Session, Slot] = {}

    @contextmanager
    def handshake(self, *, resume: bool = False) -> Iterator[None]:
        """Count one handshake (a resume when ``resume``) in flight for the block."""
        self.pending += 1
        self.resuming += resume
        try:
            yield
        finally:
            self.pending -= 1
            self.resuming -= resume

    def check_capacity(self, max_pending: int, max_sessions: int, *, resume: str = "") -> None:
        """Refuse one more handshake when either limit is reached (0: no limit). A resume
        (``resume``: its session id) of a session living here adds no session."""
        if max_pending and self.pending >= max_pending:
            raise LimitReached(
                "pending", 503, "too many terminals are being opened at once; try again shortly"
            )
        adds_session = not (resume and resume in self.resumable)
        opening = self.pending - self.resuming
        if max_sessions and adds_session and len(self.live) + opening >= max_sessions:
            raise sessions_limit()

    async def admit(
        self,
        user_key: str,
        limit: int,
        close_timeout: float,
        *,
        session_id: str = "",
        route: str = "",
        max_sessions: int = 0,
    ) -> Slot:
        """A session slot for ``user_key``; at the limit, the user's oldest detached
        session (browser gone, waiting for a resume) ends to make room, else 429. The
        shared count (if any) admits ``session_id`` too, with the same eviction."""
        evicted = False
        if limit and self.per_user[user_key] >= limit:
            evicted = await self._end_oldest_detached(user_key, close_timeout)
        if limit and self.per_user[user_key] >= limit:
            raise per_user_limit(limit)
        if self.shared is LOCAL:
            return Slot(self.per_user, user_key)
        claim = Claim(session_id, user_key, route, max_sessions, limit)
        if evicted:
            # The ended session's release must count before this admission does.
            await self.shared.settle()
        try:
            await self.shared.admit(claim)
        except LimitReached as exc:
            # The user's sessions on other replicas count too: a detached one here
            # still makes room (the shared count forgets it as it ends).
            if exc.limit != "per_user" or not await self._end_oldest_detached(
                user_key, close_timeout
            ):
                raise
            await self.shared.settle()
            await self.shared.admit(claim)
        return Slot(self.per_user, user_key, lambda: self.shared.release(claim))

    async def _end_oldest_detached(self, user_key: str, close_timeout: float) -> bool:
        detached = [
            s
            for s in self.resumable.values()
            if s.detached and (slot := self._slots.get(s)) is not None and slot.user_key == user_key
        ]
        if not detached:
            return False
        oldest = min(detached, key=lambda s: s.started)
        oldest.request_stop(
            Stop(StopReason.RESUME_EXPIRED, "replaced by a new session of the same user")
        )
        await asyncio.wait([oldest.done], timeout=close_timeout + 1)
        return True

    def user_of(self, session: Session) -> str:
        """The user key ``session`` counts against ("" once it has ended)."""
        slot = self._slots.get(session)
        return "" if slot is None else slot.user_key

    def add(self, session: Session, slot: Slot) -> None:
        self.live.add(session)
        self._slots[session] = slot
        if session.resume is not None:
            self.resumable[session.id] = session

    def remove(self, session: Session) -> None:
        """The session has ended: its slot is free, its id remembered for late resumes."""
        self.live.discard(session)
        slot = self._slots.pop(session, None)
        if slot is not None:
            slot.release()
        if self.resumable.pop(session.id, None) is not None and session.stop is not None:
            self.ended[session.id] = session.stop.reason
            while len(self.ended) > ENDED_KEPT:
                self.ended.popitem(last=False)

    def detached(self) -> int:
        return sum(1 for session in self.resumable.values() if session.detached)


def per_user_limit(limit: int) -> LimitReached:
    return LimitReached(
        "per_user",
        429,
        f"you have too many terminals open (limit {limit}); close one and try again",
    )


def sessions_limit() -> LimitReached:
    return LimitReached(
        "sessions", 503, "the gateway is at its limit of open terminals; try again later"
    )
