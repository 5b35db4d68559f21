"""The Redis client of a replica (and of the ``revoke`` and ``sessions`` commands), from
``cluster:``: redis:// or rediss:// (verified against ``tls_ca_file`` or the system's
CAs), the password read from ``password_file`` at start, short timeouts so a Redis that
does not answer costs a handshake at most ``COMMAND_TIMEOUT``."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..config import ClusterConfig

__all__ = ["COMMAND_TIMEOUT", "REDIS_ERRORS", "connect"]

# What a command raises when Redis is down, slow or refuses (a blink, not a bug).
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
# Seconds a command (or a connection attempt) may take before Redis counts as down.
COMMAND_TIMEOUT = 1.0


def connect(config: ClusterConfig, *, timeout: float | None = COMMAND_TIMEOUT) -> Redis:
    """A client for ``config.redis_url``; it connects on its first command."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
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
    return Redis.from_url(config.redis_url, **options)
