"""The Redis keys and the channel of the cluster (docs/cluster.md, "What is in Redis")."""

from __future__ import annotations

__all__ = [
    "REPLICAS",
    "REVOKE_CHANNEL",
    "SESSIONS",
    "replica_key",
    "session_key",
    "user_key",
]

_PREFIX = "terminal-proxy:"
# ZSET session id -> lease expiry (ms, Redis clock): what limits.max_sessions counts.
SESSIONS = _PREFIX + "sessions"
# ZSET replica id -> lease expiry (ms): the replicas alive.
REPLICAS = _PREFIX + "replicas"
# Pub/sub channel of revocations (JSON, docs/cluster.md).
REVOKE_CHANNEL = _PREFIX + "revoke"


def user_key(user: str) -> str:
    """ZSET session id -> lease expiry of one user key ("user:NAME" or "client:IP")."""
    return f"{_PREFIX}user:{user}"


def session_key(session_id: str) -> str:
    """HASH of one session: replica, user, route, phase, participants, started."""
    return f"{_PREFIX}session:{session_id}"


def replica_key(replica_id: str) -> str:
    """HASH of one replica: internal_url, sessions, started (expires with its lease)."""
    return f"{_PREFIX}replica:{replica_id}"


def rate_key(kind: str, key: str) -> str:
    """HASH of one handshake-rate bucket (tokens, at); expires once it would be full."""
    return f"{_PREFIX}rate:{kind}:{key}"
