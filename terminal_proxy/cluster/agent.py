"""A replica's life in the cluster: its heartbeat (the replica's key and every session it
holds, re-registered each renewal, so a Redis that lost its data is whole again one
renewal after it returns), the release of ended sessions, the revocation listener, and
the replica's view of Redis (up or down) for admissions, readiness and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis

from ..config import Config
from ..registry import Claim, Registry
from ..session.stop import Stop, StopReason
from ..tasks import spawn
from . import keys
from .limits import RedisCounts
from .redis import COMMAND_TIMEOUT, REDIS_ERRORS, connect
from .revoke import Revocation, listen

if TYPE_CHECKING:
    from ..session.relay import Session

__all__ = ["CLUSTER", "RENEW", "ClusterAgent", "RedisState"]

log = logging.getLogger("terminal_proxy.cluster")

# Sessions renewed per script call (a script blocks Redis while it runs).
_CHUNK = 200

# KEYS: sessions, replicas, the replica's hash, then per session its user zset and hash.
# ARGV: lease ms, replica id, internal url, sessions held, replica started (unix ms), then
# per session: id, user key, route, phase, participants, started (unix ms).
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local expiry = now + lease
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], expiry, ARGV[2])
redis.call('HSET', KEYS[3], 'internal_url', ARGV[3], 'sessions', ARGV[4], 'started', ARGV[5])
redis.call('PEXPIRE', KEYS[3], lease)
for i = 0, (#KEYS - 3) / 2 - 1 do
  local a = 6 + i * 6
  local user = KEYS[4 + i * 2]
  local session = KEYS[5 + i * 2]
  redis.call('ZADD', KEYS[1], expiry, ARGV[a])
  redis.call('ZADD', user, expiry, ARGV[a])
  redis.call('PEXPIRE', user, lease)
  redis.call('HSET', session, 'replica', ARGV[2], 'user', ARGV[a + 1], 'route', ARGV[a + 2],
    'phase', ARGV[a + 3], 'participants', ARGV[a + 4], 'started', ARGV[a + 5])
  redis.call('PEXPIRE', session, lease)
end
return now
"""


class RedisState(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class _Held:
    claim: Claim
    started_ms: int


class ClusterAgent:
    """One per gateway in cluster mode; ``start``/``aclose`` bracket the app's life."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        metrics: CollectorRegistry,
        *,
        internal_url: str = "",
    ) -> None:
        cluster = config.cluster
        self.replica_id = config.session.replica_id
        self.lease = cluster.lease
        self.on_redis_down = cluster.on_redis_down
        self.internal_url = internal_url
        self.client: Redis = connect(cluster)
        # Pub/sub blocks on reads: no read timeout (its own health checks find a dead link).
        self._listener_client: Redis = connect(cluster, timeout=None)
        self._registry = registry
        self.state = RedisState.UNKNOWN
        # Set while Redis is up (``wait_up``).
        self._is_up = asyncio.Event()
        self.problem = ""
        self._started_ms = round(time.time() * 1000)
        self._held: dict[str, _Held] = {}
        self._released: list[Claim] = []
        self._release_due = asyncio.Event()
        # Releases queued so far, and how many of them Redis has seen (``settled``).
        self._release_seq = 0
        self._flushed_seq = 0
        self._flushed = asyncio.Condition()
        # Renewals and releases never interleave (a release after a renewal's snapshot
        # would be undone by it).
        self._lock = asyncio.Lock()
        self._renew = self.client.register_script(RENEW)
        self._tasks: list[asyncio.Task[None]] = []
        self.counts = RedisCounts(
            self.client,
            replica_id=self.replica_id,
            lease=cluster.lease,
            on_redis_down=cluster.on_redis_down,
            healthy=lambda: self.state is not RedisState.DOWN,
            failed=self._failed,
            admitted=self._admitted,
            released=self._release,
            settle=self.settled,
        )
        self.redis_up = Gauge(
            "terminal_proxy_cluster_redis_up",
            "1 while this replica reaches the cluster's Redis.",
            registry=metrics,
        )
        self.cluster_sessions = Gauge(
            "terminal_proxy_cluster_sessions",
            "The cluster's sessions by replica, from the session registry in Redis.",
            ["replica"],
            registry=metrics,
        )
        self.revocations = Counter(
            "terminal_proxy_cluster_revocations",
            "Revocations received over the cluster channel, and sessions they closed here.",
            ["what"],
            registry=metrics,
        )
        for what in ("received", "sessions_closed"):
            self.revocations.labels(what)

    # -- the app's life

    async def start(self) -> None:
        await self.heartbeat()
        self._tasks = [
            spawn(self._heartbeat(), name="cluster-heartbeat"),
            spawn(self._releases(), name="cluster-releases"),
            spawn(
                listen(self._listener_client, self.revoke, self._listening),
                name="cluster-revocations",
            ),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2)
            if pending:
                log.warning("cluster tasks did not stop: %s", sorted(t.get_name() for t in pending))
        self._tasks = []
        # Sessions ended by the drain are released now; the replica leaves the directory.
        try:
            async with asyncio.timeout(2):
                await self._flush_releases()
                await self.client.zrem(keys.REPLICAS, self.replica_id)
                await self.client.delete(keys.replica_key(self.replica_id))
        except (*REDIS_ERRORS, TimeoutError) as exc:
            log.warning("could not leave the cluster's Redis cleanly: %s", _describe(exc))
        await self.client.aclose()
        await self._listener_client.aclose()

    # -- Redis up or down

    def ready_problem(self) -> str:
        """For /-/readiness: "" when fine; else why this replica should get no traffic."""
        if self.state is RedisState.DOWN and self.on_redis_down == "refuse":
            return f"redis unreachable: {self.problem}"
        return ""

    async def wait_up(self) -> None:
        """Return once Redis is up (after a renewal that reached it)."""
        await self._is_up.wait()

    def _failed(self, exc: BaseException) -> None:
        problem = _describe(exc)
        if self.state is not RedisState.DOWN:
            log.warning(
                "Redis unreachable (%s): live sessions carry on; new sessions %s",
                problem,
                "are refused (cluster.on_redis_down: refuse)"
                if self.on_redis_down == "refuse"
                else "count against this replica's limits only (cluster.on_redis_down: local)",
            )
        self.state = RedisState.DOWN
        self._is_up.clear()
        self.problem = problem
        self.redis_up.set(0)

    def _up(self) -> None:
        if self.state is RedisState.DOWN:
            log.info("Redis reachable again: %d sessions re-registered", len(self._held))
        self.state = RedisState.UP
        self._is_up.set()
        self.problem = ""
        self.redis_up.set(1)

    # -- leases

    def _admitted(self, claim: Claim) -> None:
        self._held[claim.session_id] = _Held(claim, round(time.time() * 1000))

    def _release(self, claim: Claim) -> None:
        if self._held.pop(claim.session_id, None) is not None:
            self._released.append(claim)
            self._release_seq += 1
            self._release_due.set()

    async def settled(self) -> None:
        """Wait until the releases queued so far have reached Redis (at most a couple of
        seconds: with Redis down they wait for its return, and their leases expire)."""
        target = self._release_seq
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * COMMAND_TIMEOUT), self._flushed:
                await self._flushed.wait_for(lambda: self._flushed_seq >= target)

    async def forgotten(self, session_id: str) -> None:
        """Return once ``session_id`` is not held here and every release has reached
        Redis (tests; a session this replica never held is forgotten already)."""
        async with self._flushed:
            await self._flushed.wait_for(
                lambda: session_id not in self._held and self._flushed_seq >= self._release_seq
            )

    async def _releases(self) -> None:
        while True:
            await self._release_due.wait()
            self._release_due.clear()
            try:
                await self._flush_releases()
            except REDIS_ERRORS as exc:
                # Kept for the next try; their leases expire meanwhile anyway.
                self._failed(exc)

    async def _flush_releases(self) -> None:
        async with self._lock:
            if not self._released:
                return
            claims, self._released = self._released, []
            seq = self._release_seq
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for claim in claims:
                        pipe.zrem(keys.SESSIONS, claim.session_id)
                        pipe.zrem(keys.user_key(claim.user_key), claim.session_id)
                        pipe.delete(keys.session_key(claim.session_id))
                    await pipe.execute()
            except BaseException:
                self._released[:0] = claims[-10_000:]
                raise
        async with self._flushed:
            self._flushed_seq = max(self._flushed_seq, seq)
            self._flushed.notify_all()

    async def _heartbeat(self) -> None:
        while True:
            interval = self.lease / 3
            if self.state is RedisState.DOWN:
                interval = min(interval, 1.0)
            await asyncio.sleep(interval)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew every lease now (the heartbeat task does it every lease/3)."""
        try:
            async with self._lock:
                await self._renew_all()
            await self._cluster_view()
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return
        self._up()
        if self._released:
            self._release_due.set()

    async def _renew_all(self) -> None:
        live = {session.id: session for session in self._registry.live}
        held = list(self._held.values())
        lease_ms = str(round(self.lease * 1000))
        head = [lease_ms, self.replica_id, self.internal_url, str(len(held)), str(self._started_ms)]
        for start in range(0, max(len(held), 1), _CHUNK):
            chunk_keys = [keys.SESSIONS, keys.REPLICAS, keys.replica_key(self.replica_id)]
            args = list(head)
            for item in held[start : start + _CHUNK]:
                claim = item.claim
                session = live.get(claim.session_id)
                if session is None:
                    phase, participants = "opening", 0
                elif session.detached:
                    phase, participants = "detached", 0
                else:
                    phase, participants = "attached", 1
                chunk_keys += [keys.user_key(claim.user_key), keys.session_key(claim.session_id)]
                args += [
                    claim.session_id,
                    claim.user_key,
                    claim.route,
                    phase,
                    str(participants),
                    str(item.started_ms),
                ]
            await self._renew(keys=chunk_keys, args=args)

    async def _cluster_view(self) -> None:
        """terminal_proxy_cluster_sessions: every live replica's session count."""
        now_ms = round(time.time() * 1000)
        replicas = [str(r) for r in await self.client.zrangebyscore(keys.REPLICAS, now_ms, "+inf")]
        async with self.client.pipeline(transaction=False) as pipe:
            for replica in replicas:
                pipe.hget(keys.replica_key(replica), "sessions")
            counts = await pipe.execute()
        self.cluster_sessions.clear()
        for replica, count in zip(replicas, counts, strict=True):
            if count is not None:
                self.cluster_sessions.labels(replica).set(int(count))

    # -- revocation

    def _listening(self, ok: bool, problem: str) -> None:
        if not ok:
            log.warning("revocation channel lost (%s): polling is the safety net", problem)

    def revoke(self, revocation: Revocation) -> int:
        """Close this replica's sessions matching ``revocation`` (4001 and its reason)."""
        self.revocations.labels("received").inc()
        closed = 0
        for session in _matching(self._registry, revocation):
            session.request_stop(
                Stop(
                    StopReason.REVOKED, "revoked over the cluster channel", public=revocation.reason
                )
            )
            closed += 1
        self.revocations.labels("sessions_closed").inc(closed)
        log.info(
            "revocation of %s %r: %d sessions closed here",
            revocation.kind,
            revocation.value,
            closed,
        )
        return closed


def _matching(registry: Registry, revocation: Revocation) -> list[Session]:
    found = []
    for session in registry.live:
        if revocation.kind == "user":
            match = session.grant.user == revocation.value
        elif revocation.kind == "session":
            match = session.id == revocation.value
        else:
            match = session.request.route == revocation.value
        if match:
            found.append(session)
    return found


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# The app's agent (tests and tools reach it through the app).
CLUSTER = web.AppKey("cluster", ClusterAgent)
