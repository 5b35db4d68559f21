"""Handshake rate limits: token buckets per client address and per user.

A bucket holds up to ``burst`` tokens and gains ``rate`` per second; a handshake takes
one or is refused with the time until the next token (429 with ``Retry-After``). A full
bucket is the same as none, so buckets idle long enough to refill are evicted; the
table is also capped (least recently used first), so memory stays bounded whatever the
number of addresses. In cluster mode the handshake also takes a token from the same
bucket in Redis (``SharedRates``), so the rate holds across replicas.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

__all__ = ["RateLimiter", "SharedRates", "client_key"]


class SharedRates(Protocol):
    """The same buckets across every replica (cluster mode: ``cluster/rates.py``)."""

    async def take(self, kind: str, key: str, rate: float, burst: int) -> float | None:
        """Take a token of ``kind``'s bucket for ``key``: 0.0 when granted, else seconds
        until one is due; None when the shared buckets cannot be reached (this replica's
        own buckets decide alone)."""
        ...


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens, time of that count); most recently used last.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when granted, else seconds until one is due."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        self._evict(now)
        return wait

    def _evict(self, now: float) -> None:
        """Drop buckets that have refilled (from the least recently used end), and the
        least recently used ones beyond ``max_keys``."""
        refill = self.burst / self.rate
        while self._buckets:
            key, (_, then) = next(iter(self._buckets.items()))
            if now - then < refill and len(self._buckets) <= self.max_keys:
                break
            del self._buckets[key]


def client_key(address: str) -> str:
    """The per-client key: the address; IPv6 by its /64 (one host usually holds a /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
