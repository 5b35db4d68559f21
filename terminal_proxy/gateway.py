"""What every handshake and session of one gateway shares.

``Gateway`` exists from ``build_app`` on; its ``Services`` (the authorizers, the dialer,
the audit log) exist while the app runs (``app.py``'s cleanup context starts and stops
them), so a handler asks ``gateway.services()`` once instead of checking each of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from .audit import AuditLog
from .authorization import Authorizer
from .config import Config
from .metrics import Metrics
from .ratelimit import RateLimiter, SharedRates
from .registry import Registry
from .replay import ReplayBudget
from .upstream import Dialer

if TYPE_CHECKING:
    from .cluster.forward import Forwarder

__all__ = ["FORWARDED_BY", "GATEWAY", "Gateway", "Services"]

# The request key the internal listener (cluster/internal.py) sets to the id of the
# replica that forwarded the request; the handshake then trusts that replica as a proxy.
FORWARDED_BY = "terminal_proxy.forwarded_by"


@dataclass(frozen=True, slots=True)
class Services:
    """The running gateway's connections to the outside."""

    # Decides new sessions.
    authorizer: Authorizer
    # The same, counting re-poll and resume outcomes (sessions re-ask through it).
    session_authorizer: Authorizer
    dialer: Dialer
    audit: AuditLog


@dataclass(eq=False)
class Gateway:
    """Everything the handler shares across sessions."""

    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    registry: Registry = field(default_factory=Registry)
    # Memory of every replay buffer (session.resume_memory_cap).
    replay_budget: ReplayBudget = field(default_factory=ReplayBudget)
    # Set when sessions must close with 1001 (after the drain period).
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    # True from the first shutdown signal: readiness fails, new terminals get 503.
    draining: bool = False
    # Where the metrics listener listens ("http://host:port"), once started.
    metrics_url: str | None = None
    # Bind the metrics listener with SO_REUSEPORT (--workers).
    reuse_port: bool = False
    # Tasks running resumable sessions (they outlive their first handler).
    session_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Handshake rate limits (limits.*_handshake_rate), by client address and by user.
    client_rate: RateLimiter = field(default_factory=lambda: RateLimiter(0, 1))
    user_rate: RateLimiter = field(default_factory=lambda: RateLimiter(0, 1))
    # Cluster mode: the same buckets across replicas (cluster/rates.py).
    shared_rates: SharedRates | None = None
    # Descriptors the metrics listener may use (listener.fd_budget); 0: no budget.
    metrics_fd_budget: int = 0
    # build_app's authorizer (the demo's, tests'), used instead of the configured one.
    given_authorizer: Authorizer | None = None
    # Why this replica should get no new traffic beyond draining ("" when none): the
    # cluster's Redis trouble (cluster mode only).
    not_ready: Callable[[], str] | None = None
    # Set while the app runs (cleanup context); see services().
    running: Services | None = None
    # cluster.peers: passes resumes and joins of other replicas' sessions to them.
    forwarder: Forwarder | None = None
    # Where the internal listener listens ("http://host:port"), once started.
    internal_url: str | None = None

    def services(self) -> Services:
        if self.running is None:
            raise RuntimeError("the gateway's services are not started (app not running)")
        return self.running


GATEWAY = web.AppKey("gateway", Gateway)
