"""Configuration values: secrets, addresses, host patterns, routes, host and port syntax,
and the problems a configuration can have."""

from __future__ import annotations

import functools
import importlib.metadata
import ipaddress
import re
from base64 import b64decode
from collections.abc import Iterable
from dataclasses import dataclass
from hmac import compare_digest
from typing import Final, Literal, TypeAlias
from urllib.parse import urlsplit

Contract: TypeAlias = Literal["gitlab", "native"]
LogLevel: TypeAlias = Literal["debug", "info", "warning", "error"]
LogFormat: TypeAlias = Literal["text", "json"]
# Who decides on a route: the authorization API, or the gateway itself against a Kubernetes
# cluster (an existing pod's container, or a terminal pod provisioned for the session).
RouteKind: TypeAlias = Literal[
    "authorization", "kubernetes", "kubernetes-provision", "kubernetes-node-debug"
]
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Size of the key GitLab Rails shares with Workhorse (``.gitlab_workhorse_secret``).
SECRET_SIZE: Final = 32
# Longest secret file we read: 32 bytes of base64 is 44 characters; allow for whitespace.
_MAX_SECRET_FILE: Final = 1024
# Where problems found in command-line flags say they come from.
_COMMAND_LINE: Final = "command line"


def _package_version() -> str:
    try:
        return importlib.metadata.version("terminal-proxy")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# --------------------------------------------------------------------------------------------
# Values


class Secret:
    """Key material that never shows itself: ``repr``/``str`` give ``Secret('***')``.

    ``reveal()`` returns the bytes, for the one place that signs with them. Equality uses
    ``hmac.compare_digest``; all secrets hash alike, so hashing leaks nothing.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    @classmethod
    def from_base64(cls, text: str | bytes, *, size: int = SECRET_SIZE) -> Secret:
        """Decode base64 ``text`` (surrounding whitespace ignored) that must give ``size`` bytes.

        The ``ValueError`` raised otherwise never quotes the text.
        """
        if not text.strip():
            raise ValueError("is empty")
        try:
            value = b64decode(text.strip(), validate=True)
        except ValueError:  # binascii.Error, or non-ASCII str
            raise ValueError("does not hold valid base64 text") from None
        if len(value) != size:
            raise ValueError(
                f"must hold base64 text that decodes to exactly {size} bytes, not {len(value)}"
            )
        return cls(value)

    def reveal(self) -> bytes:
        """Return the secret bytes. Never log or format them."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where the gateway listens. IPv6 hosts are stored without brackets; port 0 = any free."""

    host: str = "127.0.0.1"
    port: int = 8181

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse ``HOST:PORT`` or ``[IPV6]:PORT``; ``ValueError`` says what is wrong."""
        host, port = _split_host_port(text, example="127.0.0.1:8181")
        if _normalize_host(host) is None:
            raise ValueError(f"invalid host {host!r} in {text!r}")
        return cls(host, _parse_port(port, text, allow_zero=True))

    def __str__(self) -> str:
        return _join_host_port(self.host, str(self.port))


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One ``upstream.allowed_hosts`` entry: ``host:port``, ``host:*``, ``*.example.com:443``.

    ``host`` is lower-case, IPv6 without brackets; a leading ``*.`` matches one or more
    labels (``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``, not
    ``example.com``) and never an IP address. ``port`` None means any port.
    """

    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Parse one allowlist entry; ``ValueError`` says what is wrong."""
        host, port_text = _split_host_port(text, example="kube.example.com:443")
        wildcard = host.startswith("*.")
        normalized = _normalize_host(host[2:] if wildcard else host)
        if normalized is None or (wildcard and _is_ip(normalized)):
            raise ValueError(
                f"invalid host {host!r} in {text!r} (use a host name, an IP address, "
                "or *.domain for its subdomains)"
            )
        port = None if port_text == "*" else _parse_port(port_text, text, allow_zero=False)
        return cls("*." + normalized if wildcard else normalized, port)

    def matches(self, host: str, port: int) -> bool:
        """Whether dialling ``host:port`` is allowed by this entry."""
        if self.port is not None and port != self.port:
            return False
        bracketed = host.startswith("[") and host.endswith("]")
        candidate = _normalize_host(host[1:-1] if bracketed else host)
        if candidate is None:
            return False
        if self.host.startswith("*."):
            suffix = self.host[1:]
            return (
                not _is_ip(candidate)
                and candidate.endswith(suffix)
                and len(candidate) > len(suffix)
            )
        return candidate == self.host

    def __str__(self) -> str:
        return _join_host_port(self.host, "*" if self.port is None else str(self.port))


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A request path that serves terminals. ``pattern`` is applied with ``search``: anchor it."""

    name: str
    pattern: re.Pattern[str]
    # "authorization": the configured authorization API decides; the kubernetes kinds: the
    # gateway's own Kubernetes authorizer (docs/kubernetes.md), with the target taken from
    # the pattern's named groups.
    kind: RouteKind = "authorization"


DEFAULT_ROUTES: Final = (
    RouteConfig("environment", re.compile(r"^/(?:[^/]+/)+-/environments/[0-9]+/terminal\.ws\Z")),
    RouteConfig("job", re.compile(r"^/(?:[^/]+/)+-/jobs/[0-9]+/terminal\.ws\Z")),
    RouteConfig("generic", re.compile(r"^/(?:.+/)?terminal\.ws\Z")),
)

# Default patterns of the Kubernetes route kinds and the named groups each kind needs.
KUBERNETES_ROUTE_PATTERNS: Final[dict[str, str]] = {
    "kubernetes": (
        r"^/k8s/(?P<cluster>[a-z0-9][a-z0-9-]*)/(?P<namespace>[a-z0-9][a-z0-9-]*)"
        r"/(?P<pod>[a-z0-9][a-z0-9.-]*)/(?P<container>[a-z0-9][a-z0-9-]*)/terminal\.ws\Z"
    ),
    "kubernetes-provision": (
        r"^/k8s-terminal/(?P<cluster>[a-z0-9][a-z0-9-]*)/(?P<namespace>[a-z0-9][a-z0-9-]*)"
        r"/terminal\.ws\Z"
    ),
    "kubernetes-node-debug": (
        r"^/k8s-node-debug/(?P<cluster>[a-z0-9][a-z0-9-]*)/(?P<namespace>[a-z0-9][a-z0-9-]*)"
        r"/(?P<node>[a-z0-9][a-z0-9.-]*)/terminal\.ws\Z"
    ),
}
_ROUTE_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "kubernetes": ("cluster", "namespace", "pod", "container"),
    "kubernetes-provision": ("cluster", "namespace"),
    "kubernetes-node-debug": ("cluster", "namespace", "node"),
}
# Route kinds whose terminals the gateway provisions (and heartbeats, and cleans up).
PROVISION_KINDS: Final = frozenset({"kubernetes-provision", "kubernetes-node-debug"})

_LOOPBACK: Final[tuple[IPNetwork, ...]] = (
    ipaddress.IPv4Network("127.0.0.1/32"),
    ipaddress.IPv6Network("::1/128"),
)


# --------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, located as precisely as known."""

    source: str  # file path, "<string>", or "command line"
    line: int | None  # 1-based
    key: str  # dotted path ("upstream.allowed_hosts[2]") or flag ("--listen"); "" if none
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def normalize_origin(text: str) -> str:
    """Return an Origin as browsers send it: ``scheme://host[:port]``, lower-case, no
    default port (``"HTTPS://Git.Example.com:443/"`` → ``"https://git.example.com"``).
    ``"*"`` stays ``"*"``. ``ValueError`` for anything that is not an http(s) origin.
    """
    if text == "*":
        return text
    bad = ValueError(
        f"invalid origin {text!r} (use scheme://host[:port], e.g. https://gitlab.example.com)"
    )
    if any(char.isspace() for char in text):
        raise bad
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise bad
    if parts.query or parts.fragment or "@" in parts.netloc or text.endswith(("?", "#")):
        raise bad
    try:
        port = parts.port
    except ValueError:
        raise bad from None
    host = _normalize_host(parts.hostname)
    if host is None:
        raise bad
    if ":" in host:
        host = f"[{host}]"
    if port not in (None, 443 if scheme == "https" else 80):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


# Hosts and ports.

# One DNS label (RFC 1123, underscores allowed as some internal names use them).
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _normalize_host(host: str) -> str | None:
    """Lower-case DNS name or canonical IP address (IPv6 unbracketed); None if invalid.

    Cached: every dial checks its host against each allowlist entry (a few hosts, over
    and over)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # "1.2.3.999", "010.0.0.1": not a name, not an address
    ):
        return None
    return name


def _split_host_port(text: str, *, example: str) -> tuple[str, str]:
    bad = ValueError(f"invalid address {text!r} (expected HOST:PORT, e.g. {example})")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise bad
        host = text[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r} in {text!r}") from None
        return host, text[end + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise bad
    if ":" in host:
        raise ValueError(f"invalid address {text!r} (write IPv6 addresses in brackets: [::1]:443)")
    return host, port


def _parse_port(text: str, whole: str, *, allow_zero: bool) -> int:
    if (
        not (text.isascii() and text.isdigit())
        or not (0 if allow_zero else 1) <= int(text) <= 65535
    ):
        lowest = 0 if allow_zero else 1
        raise ValueError(f"invalid port {text!r} in {whole!r} (use {lowest}..65535)")
    return int(text)


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
