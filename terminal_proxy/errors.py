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
    │   ├── OriginRejected            403: cross-origin page
    │   ├── ResumeRefused             403/404/410: a ?resume= refused before the upgrade
    │   └── MethodNotAllowed          405
    ├── AuthorizationError
    │   ├── AuthorizationUnavailable  502: the API is down / refused / errored at transport
    │   ├── AuthorizationTimeout      504
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
    "GatewayError",
    "InvalidAuthorization",
    "MethodNotAllowed",
    "NoCommonSubprotocol",
    "NotWebSocket",
    "OriginRejected",
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


class OriginRejected(RequestRejected):
    status = 403


class MethodNotAllowed(RequestRejected):
    status = 405


class ResumeRefused(RequestRejected):
    """A ``?resume=`` refused before the upgrade: 404 no such session, 410 it has ended,
    403 the authorization names another user or terminal (docs/browser-protocol.md)."""

    def __init__(self, public: str, *, status: int, detail: str = "") -> None:
        super().__init__(public, detail=detail)
        self.status = status


class AuthorizationError(GatewayError):
    status = 502


class AuthorizationUnavailable(AuthorizationError):
    status = 502


class AuthorizationTimeout(AuthorizationError):
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
