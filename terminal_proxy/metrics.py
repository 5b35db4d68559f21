"""Prometheus metrics, one registry per app, served on their own listener.

Every metric is updated at most a few times per *session* (handshake, upgrade, end),
never per frame: byte counters are added once, at session end, from the session's own
totals. Labels are small closed sets (stop reasons, outcomes, HTTP statuses); never a
user, path, address, token or cookie.

Each ``build_app`` gets its own ``CollectorRegistry`` so several gateways in one process
(tests, the demo) do not clash in prometheus_client's global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .errors import (
    AuthorizationError,
    AuthorizationTimeout,
    GatewayError,
    InvalidAuthorization,
    UpstreamNotAllowed,
    UpstreamTimeout,
)
from .session.stop import StopReason

__all__ = ["CONTENT_TYPE", "Metrics", "dial_failure_reason"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Handshake stages take milliseconds to seconds; sessions minutes to hours.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# terminal_proxy_resumes outcomes: a success, the browser leaving before its resume
# message, and every stop reason a refusal can have.
RESUME_OUTCOMES = (
    "resumed",
    "browser_left",
    StopReason.RESUME_UNKNOWN.value,
    StopReason.RESUME_EXPIRED.value,
    StopReason.RESUME_BAD_TOKEN.value,
    StopReason.RESUME_FORBIDDEN.value,
    StopReason.AUTH_UNAVAILABLE.value,
    StopReason.BROWSER_PROTOCOL_ERROR.value,
)
_DURATION_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 8 * 3600, 24 * 3600)

AUTHORIZATION_OUTCOMES = ("granted", "refused", "unavailable", "timeout", "invalid")
DIAL_FAILURES = ("not_allowed", "refused", "tls", "rejected", "timeout", "failed")
REPOLL_OUTCOMES = ("unchanged", "changed", "revoked", "failed")
LIMITS = (
    "sessions",
    "per_user",
    "pending",
    "handshake_timeout",
    "client_rate",
    "user_rate",
    "redis_down",
)
# Connections closed by a listener before any request was handled (terminal_proxy/listener.py).
CONNECTION_REFUSALS = ("max_http_connections", "fd_budget", "head_timeout")


class Metrics:
    """The gateway's metrics; ``render()`` is the /metrics body."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry(auto_describe=True)
        self.sessions_active = Gauge(
            "terminal_proxy_sessions_active", "Sessions currently relayed.", registry=registry
        )
        self.sessions_ended = Counter(
            "terminal_proxy_sessions_ended",
            "Sessions ended, by stop reason (docs/close-codes.md).",
            ["stop"],
            registry=registry,
        )
        self.session_bytes = Counter(
            "terminal_proxy_session_bytes",
            "Payload bytes relayed by ended sessions: in = browser to upstream, "
            "out = upstream to browser.",
            ["direction"],
            registry=registry,
        )
        self.session_duration = Histogram(
            "terminal_proxy_session_duration_seconds",
            "Length of ended sessions.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.handshakes = Counter(
            "terminal_proxy_handshakes",
            "Requests on terminal routes, by HTTP status (101: upgraded).",
            ["status"],
            registry=registry,
        )
        self.handshakes_pending = Gauge(
            "terminal_proxy_handshakes_pending",
            "Handshakes between request and upgrade (authorizing, dialling).",
            registry=registry,
        )
        self.limited = Counter(
            "terminal_proxy_limited",
            "Handshakes refused by a limit (limits.* in the configuration).",
            ["limit"],
            registry=registry,
        )
        self.connections_refused = Counter(
            "terminal_proxy_connections_refused",
            "Connections refused at connect (a cap) or closed for a slow request head.",
            ["reason"],
            registry=registry,
        )
        self.authorization_seconds = Histogram(
            "terminal_proxy_authorization_seconds",
            "Latency of the authorization request made at handshake.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.authorizations = Counter(
            "terminal_proxy_authorizations",
            "Authorization requests made at handshake, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.dial_seconds = Histogram(
            "terminal_proxy_upstream_dial_seconds",
            "Latency of upstream dials (TCP, TLS, WebSocket handshake), failed ones included.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.dial_failures = Counter(
            "terminal_proxy_upstream_dial_failures",
            "Upstream dials that failed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.reauthorizations = Counter(
            "terminal_proxy_reauthorizations",
            "Re-polls of the authorization API during sessions, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.forwarded = Counter(
            "terminal_proxy_forwarded",
            "Resumes and joins forwarded to the replica holding the session (cluster), by "
            "outcome: 101, the holder's refusal status, unreachable, unknown_replica.",
            ["outcome"],
            registry=registry,
        )
        self.forwarded_refused = Counter(
            "terminal_proxy_internal_refused",
            "Requests to the internal listener refused: not signed by a replica.",
            registry=registry,
        )
        self.joins = Counter(
            "terminal_proxy_joins",
            "Joins of shared terminals (?join=), by outcome: joined, or why not.",
            ["outcome"],
            registry=registry,
        )
        self.participants = Gauge(
            "terminal_proxy_participants",
            "Participants (viewers and writers, not owners) of shared sessions now.",
            registry=registry,
        )
        self.resumes = Counter(
            "terminal_proxy_resumes",
            "Resume attempts (?resume=): resumed, or the stop reason that refused it.",
            ["outcome"],
            registry=registry,
        )
        self.sessions_detached = Gauge(
            "terminal_proxy_sessions_detached",
            "Resumable sessions whose browser is gone, waiting for a resume.",
            registry=registry,
        )
        self.draining = Gauge(
            "terminal_proxy_draining",
            "1 while the gateway drains for shutdown, else 0.",
            registry=registry,
        )
        # Every known label value exists from the start, so rate() and alerts see zeros.
        for reason in StopReason:
            self.sessions_ended.labels(reason.value)
        for direction in ("in", "out"):
            self.session_bytes.labels(direction)
        for outcome in RESUME_OUTCOMES:
            self.resumes.labels(outcome)
        for outcome in AUTHORIZATION_OUTCOMES:
            self.authorizations.labels(outcome)
        for failure in DIAL_FAILURES:
            self.dial_failures.labels(failure)
        for outcome in REPOLL_OUTCOMES:
            self.reauthorizations.labels(outcome)
        for limit in LIMITS:
            self.limited.labels(limit)
        for refusal in CONNECTION_REFUSALS:
            self.connections_refused.labels(refusal)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def authorization_failed(self, exc: AuthorizationError) -> None:
        if isinstance(exc, AuthorizationTimeout):
            self.authorizations.labels("timeout").inc()
        elif isinstance(exc, InvalidAuthorization):
            self.authorizations.labels("invalid").inc()
        else:
            self.authorizations.labels("unavailable").inc()

    def session_ended(
        self, stop: StopReason, bytes_in: int, bytes_out: int, seconds: float
    ) -> None:
        self.sessions_ended.labels(stop.value).inc()
        self.session_bytes.labels("in").inc(bytes_in)
        self.session_bytes.labels("out").inc(bytes_out)
        self.session_duration.observe(seconds)


def dial_failure_reason(exc: GatewayError) -> str:
    """A closed label for a failed dial (one of ``DIAL_FAILURES``)."""
    if isinstance(exc, UpstreamNotAllowed):
        return "not_allowed"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    public = exc.public
    if public.startswith("upstream TLS"):
        return "tls"
    if public.startswith("upstream refused the connection"):
        return "refused"
    if public.startswith("upstream refused the terminal"):
        return "rejected"
    return "failed"
