"""The one exception tree, and the only place that maps errors to HTTP statuses.

Before the browser is upgraded every failure becomes an HTTP response whose body names
the class of cause in words an operator can act on; after the upgrade, failures become
stop reasons (see ``session.StopReason``) with WebSocket close codes. Bodies never carry
tokens, cookies, internal addresses or tracebacks; the detail goes to the log line that
shares the request id.

    GatewayError                      500 unless a subclass says otherwise
    ├── RequestRejected               4xx: the browser's request itself is wrong
    │   ├── NotWebSocket              400: plain HTTP on a terminal route
    │   ├── UpgradeNotAllowed         400: WebSocket upgrade on a non-terminal path
    │   ├── NoCommonSubprotocol       400: browser offered none we speak
    │   ├── PathRejected              400: a path that would be normalized elsewhere (..)
    │   ├── OriginRejected            403: cross-origin page
    │   ├── HostRejected              421: Host not on browser.allowed_hosts (DNS rebinding)
    │   ├── ResumeRefused             403/404/410: a ?resume= refused before the upgrade
    │   ├── MethodNotAllowed          405
    │   ├── BadRequestTarget          400: absolute-form or other non-path target
    │   └── HeaderNotForwardable      400: a header value that is not UTF-8 (cannot be forwarded)
    ├── LimitReached                  503/429 + Retry-After: one of limits.* (``limit``)
    ├── AuthorizationError
    │   ├── AuthorizationUnavailable  502: the API is down / refused / errored at transport
    │   │   └── ProvisioningFailed    502: the cluster cannot give the user a provisioned
    │   │                                  terminal (the gateway's RBAC, an API error, the
    │   │                                  cluster unreachable, an image that cannot be
    │   │                                  pulled, a container that cannot start)
    │   ├── AuthorizationTimeout      504
    │   │   └── ProvisioningTimeout   504: the provisioned terminal's pod not ready in time
    │   └── InvalidAuthorization      502: malformed JSON or invalid connection details
    └── UpstreamError
        ├── UpstreamNotAllowed        502: host:port not on upstream.allowed_hosts
        ├── UpstreamDialFailed        502: refused, TLS, handshake rejected
        └── UpstreamTimeout           504
"""

from __future__ import annotations

__all__ = [
    "AuthorizationError",
    "AuthorizationTimeout",
    "AuthorizationUnavailable",
    "BadRequestTarget",
    "GatewayError",
    "HeaderNotForwardable",
    "HostRejected",
    "InvalidAuthorization",
    "LimitReached",
    "MethodNotAllowed",
    "NoCommonSubprotocol",
    "NotWebSocket",
    "OriginRejected",
    "PathRejected",
    "ProvisioningFailed",
    "ProvisioningTimeout",
    "ReplicaUnreachable",
    "RequestRejected",
    "ResumeRefused",
    "UpgradeNotAllowed",
    "UpstreamDialFailed",
    "UpstreamError",
    "UpstreamNotAllowed",
    "UpstreamTimeout",
]


class GatewayError(Exception):
    """Base class; ``public`` goes to the browser, ``detail`` only to the log."""

    status: int = 500

    def __init__(self, public: str, *, detail: str = "") -> None:
        super().__init__(public)
        self.public = public
        self.detail = detail or public

    def __str__(self) -> str:
        return self.public


class RequestRejected(GatewayError):
    status = 400


class NotWebSocket(RequestRejected):
    status = 400


class UpgradeNotAllowed(RequestRejected):
    status = 400


class NoCommonSubprotocol(RequestRejected):
    status = 400


class PathRejected(RequestRejected):
    status = 400


class OriginRejected(RequestRejected):
    status = 403


class HostRejected(RequestRejected):
    status = 421


class MethodNotAllowed(RequestRejected):
    status = 405


class ResumeRefused(RequestRejected):
    """A ``?resume=`` refused before the upgrade: 404 no such session, 410 it has ended,
    403 the authorization names another user or terminal (docs/browser-protocol.md)."""

    def __init__(self, public: str, *, status: int, detail: str = "") -> None:
        super().__init__(public, detail=detail)
        self.status = status


class BadRequestTarget(RequestRejected):
    status = 400


class HeaderNotForwardable(RequestRejected):
    status = 400


class LimitReached(GatewayError):
    """One of ``limits.*`` refused the request; ``limit`` names it (metrics label) and
    ``retry_after`` (seconds) overrides ``limits.retry_after`` when set."""

    def __init__(
        self, limit: str, status: int, public: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(public)
        self.limit = limit
        self.status = status
        self.retry_after = retry_after


class AuthorizationError(GatewayError):
    status = 502


class AuthorizationUnavailable(AuthorizationError):
    status = 502


class AuthorizationTimeout(AuthorizationError):
    status = 504


class ProvisioningFailed(AuthorizationUnavailable):
    """The cluster side of a provisioned terminal failed: not the user's fault, so not a
    refusal (``authorizations{outcome="unavailable"}``, logged as a warning)."""

    status = 502


class ProvisioningTimeout(AuthorizationTimeout):
    """The provisioned terminal's pod was not ready within ``ready_timeout``."""

    status = 504


class InvalidAuthorization(AuthorizationError):
    status = 502


class UpstreamError(GatewayError):
    status = 502


class UpstreamNotAllowed(UpstreamError):
    status = 502


class UpstreamDialFailed(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class ReplicaUnreachable(GatewayError):
    """The replica holding a session did not answer a forwarded resume or join."""

    status = 502
