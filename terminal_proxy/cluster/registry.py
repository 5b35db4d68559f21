"""The cluster's session registry as read from Redis (the replicas write it: admission
and heartbeat, ``limits`` and ``agent``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from . import keys

__all__ = ["ClusterSession", "list_sessions"]


@dataclass(frozen=True, slots=True)
class ClusterSession:
    id: str
    replica: str
    user: str
    route: str
    phase: str
    participants: int
    # Unix seconds.
    started: float

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "replica": self.replica,
            "user": self.user,
            "route": self.route,
            "phase": self.phase,
            "participants": self.participants,
            "started": round(self.started, 3),
            "age_s": round(max(0.0, time.time() - self.started), 1),
        }


async def list_sessions(client: Redis) -> list[ClusterSession]:
    """Every session with a live lease, oldest first."""
    now_ms = round(time.time() * 1000)
    ids = [str(i) for i in await client.zrangebyscore(keys.SESSIONS, now_ms, "+inf")]
    async with client.pipeline(transaction=False) as pipe:
        for session_id in ids:
            pipe.hgetall(keys.session_key(session_id))
        hashes = await pipe.execute()
    found = [
        ClusterSession(
            id=session_id,
            replica=fields.get("replica", ""),
            user=fields.get("user", ""),
            route=fields.get("route", ""),
            phase=fields.get("phase", ""),
            participants=int(fields.get("participants") or 0),
            started=int(fields.get("started") or 0) / 1000,
        )
        for session_id, fields in zip(ids, hashes, strict=True)
        if fields
    ]
    return sorted(found, key=lambda s: (s.started, s.id))
