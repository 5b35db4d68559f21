"""Where each replica takes requests forwarded by the others: its internal URL by id."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from redis.asyncio import Redis

from . import keys
from .redis import REDIS_ERRORS

__all__ = ["RedisDirectory", "ReplicaDirectory", "StaticDirectory"]

log = logging.getLogger("terminal_proxy.cluster")


class ReplicaDirectory(Protocol):
    """The replicas of a cluster, as the forwarding sees them."""

    async def internal_url(self, replica_id: str) -> str | None:
        """The internal URL of ``replica_id``; None when it is unknown (or its lease has
        expired: it is gone, and so are its sessions)."""
        ...


class StaticDirectory:
    """``cluster.peers``: a fixed map, for clusters without Redis (and tests)."""

    __slots__ = ("_urls",)

    def __init__(self, peers: Iterable[tuple[str, str]]) -> None:
        self._urls = dict(peers)

    async def internal_url(self, replica_id: str) -> str | None:
        return self._urls.get(replica_id)


class RedisDirectory:
    """The replicas' keys in Redis (``terminal-proxy:replica:<id>``, a hash whose
    ``internal_url`` each replica's heartbeat writes; it expires with the replica's
    lease). A Redis that cannot be reached knows no replica (logged)."""

    __slots__ = ("_client",)

    def __init__(self, client: Redis) -> None:
        self._client = client

    async def internal_url(self, replica_id: str) -> str | None:
        try:
            url = await self._client.hget(keys.replica_key(replica_id), "internal_url")
        except REDIS_ERRORS as exc:
            log.warning("replica directory: Redis unreachable (%s)", type(exc).__name__)
            return None
        return str(url) if url else None
