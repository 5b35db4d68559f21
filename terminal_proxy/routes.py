"""Which terminal route a request is on, and the cheap checks of the browser's request.

Pure functions of the request head (no I/O, no gateway state), table-tested in
tests/test_routes.py: the route is matched once here and carried in the
``BrowserRequest`` (name and the pattern's named groups) to every authorizer.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
from collections.abc import Sequence

from multidict import MultiMapping
from yarl import URL

from .authorization import BrowserRequest
from .config import HostPattern, RouteConfig
from .errors import HeaderNotForwardable, HostRejected, NotWebSocket, OriginRejected

__all__ = [
    "IPNetwork",
    "authority_of",
    "check_header_values",
    "check_host",
    "check_origin",
    "check_upgrade_headers",
    "is_trusted",
    "match_route",
    "offered",
    "request_scheme",
    "snapshot",
    "wants_upgrade",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# What aiohttp makes of a byte that is not UTF-8 (surrogateescape).
_SURROGATE = re.compile("[\udc80-\udcff]")
Headers = MultiMapping[str]


def match_route(
    routes: Sequence[RouteConfig], path: str
) -> tuple[RouteConfig, tuple[tuple[str, str], ...]] | None:
    """The first route whose pattern matches ``path``, with its named groups."""
    for route in routes:
        found = route.pattern.search(path)
        if found is not None:
            groups = tuple((k, v) for k, v in found.groupdict().items() if v is not None)
            return route, groups
    return None


def _tokens(headers: Headers, name: str) -> set[str]:
    return {
        token.strip().lower() for value in headers.getall(name, ()) for token in value.split(",")
    }


def wants_upgrade(headers: Headers) -> bool:
    return "websocket" in _tokens(headers, "Upgrade") or "upgrade" in _tokens(headers, "Connection")


def check_upgrade_headers(headers: Headers) -> None:
    missing = []
    if "upgrade" not in _tokens(headers, "Connection"):
        missing.append("Connection: upgrade")
    if "websocket" not in _tokens(headers, "Upgrade"):
        missing.append("Upgrade: websocket")
    if missing:
        raise NotWebSocket(
            "this is a terminal WebSocket endpoint, but the request is missing "
            + " and ".join(f"'{m}'" for m in missing)
            + ". If a reverse proxy (nginx, HAProxy, an ingress) is in front of terminal-proxy, "
            "it may be stripping these headers: it must pass on Connection and Upgrade."
        )
    if headers.get("Sec-WebSocket-Version", "") != "13":
        raise NotWebSocket("unsupported WebSocket version: Sec-WebSocket-Version must be 13")
    key = headers.get("Sec-WebSocket-Key")
    if not key:
        raise NotWebSocket("Sec-WebSocket-Key header is missing")
    # Checked here, as the upgrade would check it, so a bad key is refused before any
    # authorization request or upstream dial (RFC 6455 4.2.1: 16 bytes, base64).
    try:
        valid = len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise NotWebSocket("invalid Sec-WebSocket-Key: it must be 16 bytes in base64")


def check_header_values(headers: Headers) -> None:
    """Every header value must be UTF-8 (or ASCII) to be forwarded to the authorization
    API as the browser sent it. aiohttp reads other bytes as lone surrogates, and its
    client can only write UTF-8, so such a value would reach the API changed: refused."""
    for name, value in headers.items():
        if _SURROGATE.search(value) or _SURROGATE.search(name):
            raise HeaderNotForwardable(
                f"the {name.encode('ascii', 'replace').decode()!r} header holds bytes that "
                "are not UTF-8; the gateway forwards headers unchanged and cannot forward it",
            )


def offered(headers: Headers) -> list[str]:
    """The subprotocols the browser offered, in its order."""
    return [
        token.strip()
        for value in headers.getall("Sec-WebSocket-Protocol", ())
        for token in value.split(",")
        if token.strip()
    ]


def request_scheme(
    listener_scheme: str, remote: str, headers: Headers, trusted: Sequence[IPNetwork]
) -> str:
    """The scheme the browser used: the listener's, or the last ``X-Forwarded-Proto``
    value when the TCP peer is a trusted proxy (it terminates TLS in front of us)."""
    if is_trusted(remote, trusted):
        told = [
            part.strip().lower()
            for value in headers.getall("X-Forwarded-Proto", ())
            for part in value.split(",")
            if part.strip()
        ]
        if told and told[-1] in ("http", "https"):
            return told[-1]
    return listener_scheme


@functools.lru_cache(maxsize=256)
def authority_of(host: str, scheme: str) -> tuple[str, int] | None:
    """A Host header as (lower-case host, port; the scheme's default when absent), or
    None when it is not a plain ``host[:port]``. Cached: every handshake asks, and a
    gateway sees few Host values (a bounded cache, so many cost only a parse each)."""
    if not host or any(char in host for char in "/?#@\\") or not host.isprintable():
        return None
    try:
        url = URL(f"{scheme}://{host}")
    except ValueError:
        return None
    if url.host is None or url.port is None:
        return None
    return url.host.lower().rstrip("."), url.port


def check_host(host: str, allowed: Sequence[HostPattern], scheme: str) -> tuple[str, int] | None:
    """``browser.allowed_hosts``: the Host header must name this gateway (stops DNS
    rebinding, where Host and Origin are both the attacker's name). Returns the Host."""
    authority = authority_of(host, scheme)
    if not allowed:
        return authority
    if authority is not None and any(entry.matches(*authority) for entry in allowed):
        return authority
    raise HostRejected(
        "this gateway does not serve terminals for the host in the request (browser.allowed_hosts)",
        detail=f"Host {host!r} is not on browser.allowed_hosts",
    )


def check_origin(
    origin: str | None,
    allowed: Sequence[str],
    scheme: str,
    authority: tuple[str, int] | None,
    host: str,
) -> None:
    """Same origin (the Origin's scheme, host and port equal the listener's scheme and the
    Host header) or an origin on ``browser.allowed_origins``; no Origin: not a browser."""
    if origin is None:
        return  # not a browser (kubectl, scripts): nothing to forge
    try:
        url = URL(origin)
    except ValueError as exc:
        raise OriginRejected("origin not allowed", detail=f"unparseable Origin {origin!r}") from exc
    if url.host is not None:
        origin_host = url.host.lower()
        if (
            authority is not None
            and url.scheme.lower() == scheme
            and (origin_host.rstrip("."), url.port) == authority
        ):
            return
        port = url.explicit_port
        netloc = origin_host if port is None else f"{origin_host}:{port}"
        normalized = f"{url.scheme}://{netloc}"
        if "*" in allowed or normalized in {a.rstrip("/").lower() for a in allowed}:
            return
    raise OriginRejected(
        "origin not allowed: the page opening this terminal is not same-origin and not on "
        "browser.allowed_origins",
        detail=f"Origin {origin!r} is not {scheme}:// with Host {host!r} and not allowed "
        "(behind a TLS proxy, the proxy must send X-Forwarded-Proto and be on "
        "browser.trusted_proxies)",
    )


def snapshot(
    *,
    raw_path: str,
    query_string: str,
    headers: Headers,
    remote: str,
    trusted: Sequence[IPNetwork],
    route: str = "",
    params: tuple[tuple[str, str], ...] = (),
) -> BrowserRequest:
    """What the authorization needs of the request, with the client address worked out
    through trusted proxies' X-Forwarded-For."""
    prior = [
        part.strip()
        for value in headers.getall("X-Forwarded-For", ())
        for part in value.split(",")
        if part.strip()
    ]
    if prior and is_trusted(remote, trusted):
        forwarded_for = ", ".join([*prior, remote])
        client_ip = next((ip for ip in reversed(prior) if not is_trusted(ip, trusted)), prior[0])
    else:
        forwarded_for = remote
        client_ip = remote
    return BrowserRequest(
        path=raw_path.split("?", 1)[0],
        query_string=query_string,
        headers=tuple(headers.items()),
        client_ip=client_ip,
        forwarded_for=forwarded_for,
        peer=remote,
        route=route,
        params=params,
    )


def is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
