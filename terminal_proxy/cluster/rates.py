"""Handshake rate limits across replicas: the token buckets of ``ratelimit.py`` in Redis.

One Lua script per take (one round trip, only when a rate limit is configured): the
bucket's tokens are refilled at ``rate`` per second up to ``burst`` using Redis's own
clock (the replicas' clocks never disagree about it), one is taken or the wait until the
next is returned, and the bucket expires once it would be full again (a full bucket is
the same as none). A Redis that cannot be reached leaves the decision to the replica's
own buckets.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from . import keys
from .redis import REDIS_ERRORS

__all__ = ["RedisRates"]

log = logging.getLogger("terminal_proxy.cluster")

TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local kept = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(kept[1]) or burst
local at = tonumber(kept[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRates:
    """``SharedRates`` on the cluster's Redis."""

    __slots__ = ("_take",)

    def __init__(self, client: Redis) -> None:
        self._take = client.register_script(TAKE)

    async def take(self, kind: str, key: str, rate: float, burst: int) -> float | None:
        try:
            wait = await self._take(keys=[keys.rate_key(kind, key)], args=[rate, burst])
        except REDIS_ERRORS as exc:
            log.warning("handshake rate: Redis unreachable (%s)", type(exc).__name__)
            return None
        return float(wait)
