"""The Redis client of a replica (and of the ``revoke`` and ``sessions`` commands), from
``cluster:``: redis:// or rediss:// (verified against ``tls_ca_file`` or the system's
CAs), the password read from ``password_file`` at start, short timeouts so a Redis that
does not answer costs a handshake at most ``COMMAND_TIMEOUT``."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from ..config import ClusterConfig

__all__ = ["COMMAND_TIMEOUT", "REDIS_ERRORS", "connect"]

# What a command raises when Redis is down, slow or refuses (a blink, not a bug).
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
# Connections of one client (admissions in flight share them; Redis answers in µs).
MAX_CONNECTIONS = 32
# Seconds a command (or a connection attempt) may take before Redis counts as down.
COMMAND_TIMEOUT = 1.0


def connect(config: ClusterConfig, *, timeout: float | None = COMMAND_TIMEOUT) -> Redis:
    """A client for ``config.redis_url``; it connects on its first command."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout or COMMAND_TIMEOUT,
        "decode_responses": True,
        # A pooled connection idle for a while is checked before use (a restarted Redis).
        "health_check_interval": 10,
        "client_name": "terminal-proxy",
    }
    if config.password:
        options["password"] = config.password
    if config.redis_url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        if config.tls_ca_file:
            options["ssl_ca_certs"] = config.tls_ca_file
    # A burst of admissions waits for one of a bounded set of connections (at most
    # ``timeout``) instead of failing at once when the pool is exhausted.
    pool = BlockingConnectionPool.from_url(
        config.redis_url, max_connections=MAX_CONNECTIONS, timeout=timeout, **options
    )
    # from_pool: closing the client closes its pool (and its connections).
    return Redis.from_pool(pool)
