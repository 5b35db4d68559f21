"""Where each replica takes requests forwarded by the others: its internal URL by id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = ["ReplicaDirectory", "StaticDirectory"]


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
