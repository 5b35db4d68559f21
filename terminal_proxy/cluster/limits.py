"""Global ``limits.max_sessions`` and ``limits.max_sessions_per_user``: one Lua script per
admitted session (one round trip on the hot path) counts the live leases, refuses at a
limit, else adds the session's lease and registers it. Leases expire ``cluster.lease``
after their last renewal (every lease/3 by the replica holding them, ``agent``): a dead
replica's sessions stop counting within one lease, i.e. 3 × the renewal interval.

Release happens off the hot path: ``release`` queues the session, the agent's release
task removes queued sessions in one pipeline as soon as it runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from redis.asyncio import Redis

from ..errors import LimitReached
from ..registry import Claim, per_user_limit, sessions_limit
from . import keys
from .redis import REDIS_ERRORS

__all__ = ["ADMIT", "RedisCounts", "redis_down"]

log = logging.getLogger("terminal_proxy.cluster")

# KEYS: sessions, the user's zset, the session's hash. ARGV: session id, lease ms,
# max_sessions, max_per_user, replica, user key, route, started (unix ms).
# Returns 0 (admitted), 1 (max_sessions reached), 2 (max_sessions_per_user reached).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local max_sessions = tonumber(ARGV[3])
if max_sessions > 0 and redis.call('ZCARD', KEYS[1]) >= max_sessions then return 1 end
local max_user = tonumber(ARGV[4])
if max_user > 0 and redis.call('ZCARD', KEYS[2]) >= max_user then return 2 end
local expiry = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'replica', ARGV[5], 'user', ARGV[6], 'route', ARGV[7],
  'phase', 'opening', 'participants', '0', 'started', ARGV[8])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 0
"""


def redis_down() -> LimitReached:
    return LimitReached(
        "redis_down",
        503,
        "the cluster's session store cannot be reached; try again shortly",
    )


class RedisCounts:
    """The cluster's counts (``registry.SharedCounts``) in Redis."""

    def __init__(
        self,
        client: Redis,
        *,
        replica_id: str,
        lease: float,
        on_redis_down: Literal["refuse", "local"],
        healthy: Callable[[], bool],
        failed: Callable[[BaseException], None],
        admitted: Callable[[Claim], None],
        released: Callable[[Claim], None],
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        self._client = client
        self._replica_id = replica_id
        self._lease_ms = round(lease * 1000)
        self._on_down = on_redis_down
        # The agent's view of Redis: while it is down, admissions do not wait for it.
        self._healthy = healthy
        self._failed = failed
        self._admitted = admitted
        self._released = released
        self._settle = settle
        self._admit = client.register_script(ADMIT)
        # Round trips of admissions (metrics, the load report).
        self.round_trips = 0

    async def admit(self, claim: Claim) -> None:
        if not self._healthy():
            self._refuse_or_fall_back()
            self._admitted(claim)
            return
        self.round_trips += 1
        try:
            verdict = await self._admit(
                keys=[
                    keys.SESSIONS,
                    keys.user_key(claim.user_key),
                    keys.session_key(claim.session_id),
                ],
                args=[
                    claim.session_id,
                    self._lease_ms,
                    claim.max_sessions,
                    claim.max_per_user,
                    self._replica_id,
                    claim.user_key,
                    claim.route,
                    round(time.time() * 1000),
                ],
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            self._refuse_or_fall_back()
            self._admitted(claim)
            return
        if verdict == 1:
            raise sessions_limit()
        if verdict == 2:
            raise per_user_limit(claim.max_per_user)
        self._admitted(claim)

    def _refuse_or_fall_back(self) -> None:
        """Redis is down: refuse (503), or admit on this replica's own limits (the
        heartbeat registers the session when Redis is back)."""
        if self._on_down == "refuse":
            raise redis_down()

    def release(self, claim: Claim) -> None:
        self._released(claim)

    async def settle(self) -> None:
        await self._settle()
