"""Connection details: where one terminal session goes, validated and compared by value.

The authorization API names the upstream (URL, headers, CA, subprotocols, time limit);
this module turns its JSON into a frozen ``ConnectionDetails`` or an
``InvalidAuthorization`` error naming the bad field, and checks the URL's host:port
against the upstream allowlist. Re-polls compare details with ``==``: any difference in
URL, headers, CA, subprotocols or time limit ends the session (Workhorse's ``IsEqual``).
Header order across keys is not significant; value order within a key is.
"""

from __future__ import annotations

import functools
import math
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from yarl import URL

from .errors import InvalidAuthorization, UpstreamNotAllowed

__all__ = [
    "RESERVED_HEADERS",
    "RESERVED_HEADER_PREFIXES",
    "ConnectionDetails",
    "HostMatcher",
    "Target",
    "ssl_context_for",
]

# Headers an authorization answer must not set for the upstream (docs/authorization-api.md):
# those the gateway owns on the handshake (gorilla/websocket refuses them too: "duplicate
# header"), hop-by-hop and body headers, and the browser's identity (Host, Cookie, Origin):
# a grant names credentials for the upstream, never where the request seems to come from.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "cookie",
        "origin",
        "connection",
        "upgrade",
        "content-length",
        "transfer-encoding",
        "te",
        "trailer",
        "trailers",
        "keep-alive",
        "http2-settings",
        "x-forwarded-for",
    }
)
# Every header starting with one of these, too (Sec-WebSocket-*, Proxy-*).
RESERVED_HEADER_PREFIXES = ("sec-websocket-", "proxy-")
# RFC 9110 token; used with fullmatch (``$`` would accept a trailing newline).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field value we pass on: visible ASCII, space and tab (no CTLs, no obs-text).
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")
_K8S_PATH = re.compile(
    r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<pod>[^/]+)/(?P<verb>exec|attach)$"
)
_MAX_SESSION_TIME = 366 * 24 * 3600.0


class HostMatcher(Protocol):
    """Anything with ``matches(host, port)``: the config's upstream allowlist entries."""

    def matches(self, host: str, port: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Target:
    """What the session reaches, for logs and audit (never credentials)."""

    host: str
    port: int
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    verb: str | None = None

    def describe(self) -> str:
        where = f"{self.host}:{self.port}"
        if self.pod is None:
            return where
        container = f"/{self.container}" if self.container else ""
        return f"{where} {self.verb} {self.namespace}/{self.pod}{container}"


@dataclass(frozen=True, slots=True)
class ConnectionDetails:
    """One upstream to dial, exactly as authorized."""

    url: str
    subprotocols: tuple[str, ...]
    # (name, values) pairs sorted by lower-cased name; values keep their order.
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ca_pem: str | None = None
    # Seconds; 0 means the authorization sets no limit.
    max_session_time: float = 0.0
    target: Target = field(compare=False, default=Target("", 0))

    def __repr__(self) -> str:
        # Header values carry bearer tokens: never in a repr, so never in a log.
        names = ", ".join(name for name, _ in self.headers)
        return (
            f"ConnectionDetails(target={self.target.describe()!r}, "
            f"subprotocols={self.subprotocols!r}, headers=[{names}], "
            f"ca_pem={'yes' if self.ca_pem else 'no'}, max_session_time={self.max_session_time})"
        )

    @property
    def scheme(self) -> str:
        return URL(self.url).scheme

    def header_items(self) -> list[tuple[str, str]]:
        """Headers as (name, value) pairs, one per value, for the handshake."""
        return [(name, value) for name, values in self.headers for value in values]

    def check_allowed(self, allowlist: Sequence[HostMatcher]) -> None:
        """Raise UpstreamNotAllowed unless host:port is on the allowlist."""
        host, port = self.target.host, self.target.port
        if not any(entry.matches(host, port) for entry in allowlist):
            raise UpstreamNotAllowed(
                "upstream host is not on the gateway's allowlist (upstream.allowed_hosts)",
                detail=f"upstream {host}:{port} is not on upstream.allowed_hosts",
            )

    @classmethod
    def build(
        cls,
        *,
        url: Any,
        subprotocols: Any,
        headers: Any,
        ca_pem: Any,
        max_session_time: Any,
        names: Mapping[str, str],
    ) -> ConnectionDetails:
        """Validate raw JSON values; ``names`` maps field → its name in the contract."""
        parsed = _parse_url(url, names["url"])
        return cls(
            url=str(parsed),
            subprotocols=_parse_subprotocols(subprotocols, names["subprotocols"]),
            headers=_parse_headers(headers, names["headers"]),
            ca_pem=_parse_ca(ca_pem, names["ca_pem"]),
            max_session_time=_parse_max_time(max_session_time, names["max_session_time"]),
            target=_target(parsed),
        )


def _bad(name: str, why: str) -> InvalidAuthorization:
    return InvalidAuthorization(
        f"authorization API returned invalid connection details: {name} {why}"
    )


def _parse_url(value: Any, name: str) -> URL:
    if not isinstance(value, str) or not value:
        raise _bad(name, "must be a non-empty string")
    try:
        url = URL(value)
    except ValueError as exc:
        raise _bad(name, "is not a valid URL") from exc
    if url.scheme not in ("ws", "wss"):
        raise _bad(name, f"must use ws:// or wss://, not {url.scheme or 'nothing'}://")
    if not url.host:
        raise _bad(name, "has no host")
    if url.user is not None or url.password is not None:
        raise _bad(name, "must not carry credentials (use headers)")
    if url.port is None:
        raise _bad(name, "has no usable port")
    return url.with_fragment(None)


def _parse_subprotocols(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _bad(name, "must be a non-empty list of strings")
    if not all(isinstance(item, str) and _TOKEN.fullmatch(item) for item in value):
        raise _bad(name, "must hold subprotocol tokens only")
    return tuple(value)


def _parse_headers(value: Any, name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _bad(name, "must be an object of header name to list of strings")
    out: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for key, values in value.items():
        if not isinstance(key, str) or not _TOKEN.fullmatch(key):
            raise _bad(name, f"has an invalid header name {_shown(key)}")
        if _reserved(key):
            raise _bad(
                f"{name}.{key}",
                "must not be given: the gateway sets it, or it is hop-by-hop "
                "(docs/authorization-api.md lists the refused headers)",
            )
        if key.lower() in seen:
            raise _bad(f"{name}.{key}", "is given twice")
        seen.add(key.lower())
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _bad(f"{name}.{key}", "must be a list of strings")
        if not all(_FIELD_VALUE.fullmatch(v) for v in values):
            raise _bad(
                f"{name}.{key}",
                "contains a control or non-ASCII character (only printable ASCII, space and tab)",
            )
        out.append((key, tuple(values)))
    out.sort(key=lambda item: item[0].lower())
    return tuple(out)


def _reserved(header: str) -> bool:
    lower = header.lower()
    return lower in RESERVED_HEADERS or lower.startswith(RESERVED_HEADER_PREFIXES)


def _shown(text: str, limit: int = 40) -> str:
    """``text`` for an error message: escaped (``ascii``), cut to ``limit`` characters."""
    shown = ascii(text[:limit])
    return shown + "…" if len(text) > limit else shown


def _parse_ca(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(name, "must be a string holding PEM certificates")
    try:
        ssl_context_for(value)
    except (ssl.SSLError, ValueError) as exc:
        raise _bad(name, "is not a valid PEM certificate") from exc
    return value


def _parse_max_time(value: Any, name: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, "must be a number of seconds")
    if not math.isfinite(value):
        raise _bad(name, "must be a finite number of seconds (not NaN or infinity)")
    if value < 0:
        raise _bad(name, "must not be negative")
    if value > _MAX_SESSION_TIME:
        raise _bad(name, "is out of range (at most 366 days)")
    return float(value)


def _target(url: URL) -> Target:
    assert url.host is not None and url.port is not None
    match = _K8S_PATH.match(url.path)
    if match is None:
        return Target(url.host, url.port)
    return Target(
        url.host,
        url.port,
        namespace=match["namespace"],
        pod=match["pod"],
        container=url.query.get("container"),
        verb=match["verb"],
    )


@functools.lru_cache(maxsize=64)
def ssl_context_for(ca_pem: str | None) -> ssl.SSLContext:
    """A verifying client context: only ``ca_pem`` when given, the system roots otherwise.

    Building a context costs milliseconds; sessions to the same cluster share one.
    """
    if ca_pem is None:
        return ssl.create_default_context()
    # Trust exactly the CA the authorization named for this upstream, not the system roots.
    fresh = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    fresh.minimum_version = ssl.TLSVersion.TLSv1_2
    fresh.load_verify_locations(cadata=ca_pem)
    if not fresh.get_ca_certs():
        raise ValueError("no certificate in PEM")
    return fresh
