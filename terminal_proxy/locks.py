"""A lock per key that exists only while someone holds it or waits for it.

A plain ``dict[key, asyncio.Lock]`` keeps one lock per key ever seen (one per user, for
ever, in a long-running gateway); ``KeyedLocks`` forgets a key when its last holder or
waiter leaves, cancelled waiters included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["KeyedLocks"]

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class KeyedLocks(Generic[K]):
    """``async with locks.hold(key):`` serialises the holders of one key."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry] = {}

    def __len__(self) -> int:
        """How many keys are held or waited for."""
        return len(self._entries)

    def users(self, key: K) -> int:
        """How many hold or wait for ``key`` (0: it is forgotten)."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.users

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]
