"""Process configuration: YAML in, frozen typed dataclasses out.

=============================================  ============================================
call                                           result
=============================================  ============================================
``default_config()``                           every default (same as ``load_config("")``)
``load_config(text, source="tp.yaml")``        ``Config``, or ``ConfigError`` listing *all*
                                               problems as ``tp.yaml:12: key.path: message``
``load_config_file(path)``                     the same, reading ``path``
``config.with_overrides(listen="[::1]:0")``    a new ``Config`` with the CLI flags applied
``validate_for_serving(config)``               problems that only matter for ``serve``
=============================================  ============================================

The defaults live in one place: the field defaults of the dataclasses below. The loader is
table-driven: each section is a ``_Section`` that maps YAML keys to small readers, and a
reader either returns a typed value or reports a ``Problem`` and leaves the default in place,
so one pass reports every problem in the file. YAML is composed with ``yaml.SafeLoader`` (the
nodes carry line numbers) and scalars are built by ``SafeConstructor``, i.e. ``safe_load``
semantics, plus two strictnesses: unknown and duplicate keys are errors, and booleans must be
written ``true``/``false`` (YAML 1.1 would also read ``yes``/``no``/``on``/``off``).

The Workhorse secret is read when the config is loaded (``authorization.secret_file`` or
``authorization.secret_env``) and kept in a ``Secret``, which never prints its bytes; problems
name the key and the file or variable, never the content.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import ipaddress
import os
import re
import ssl
from base64 import b64decode
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hmac import compare_digest
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .units import KiB, MiB, parse_duration, parse_size

__all__ = [
    "DEFAULT_ROUTES",
    "PROVISION_KINDS",
    "SECRET_SIZE",
    "AuditConfig",
    "AuthorizationConfig",
    "BrowserConfig",
    "Config",
    "ConfigError",
    "Contract",
    "HostPattern",
    "IPNetwork",
    "KubernetesClusterConfig",
    "KubernetesConfig",
    "KubernetesIdentityConfig",
    "KubernetesNodeDebugConfig",
    "KubernetesProvisionConfig",
    "LimitsConfig",
    "ListenAddress",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "MetricsConfig",
    "Problem",
    "RecordingConfig",
    "RouteConfig",
    "RouteKind",
    "Secret",
    "SessionConfig",
    "TLSConfig",
    "UpstreamConfig",
    "default_config",
    "load_config",
    "load_config_file",
    "normalize_origin",
    "parse_replica_id",
    "validate_for_serving",
]

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
# Sections. The field defaults below are the only defaults; docs/configuration.md lists them.


@dataclass(frozen=True, slots=True)
class AuthorizationConfig:
    # Base URL of the web app (http/https, optional path prefix, no trailing slash); None: unset.
    backend: str | None = None
    # Which authorization API the backend speaks.
    contract: Contract = "gitlab"
    # The Workhorse secret, loaded from secret_file or secret_env; None when neither is set.
    secret: Secret | None = None
    # Where the secret came from (at most one is set), for messages.
    secret_file: str | None = None
    secret_env: str | None = None
    # Timeout of one authorization request, seconds.
    timeout: float = 10.0
    # Re-authorization interval, seconds; 0 disables re-polling.
    poll_interval: float = 60.0
    # Each interval is randomized by ±poll_jitter (a fraction, 0..0.5).
    poll_jitter: float = 0.1
    # Consecutive transport/5xx re-poll failures tolerated before the session is closed.
    poll_failure_grace: int = 2
    # Bound on authorization response bodies read, parsed or passed back, bytes.
    max_response_body: int = 32 * KiB
    # Value of the Gitlab-Workhorse request header.
    workhorse_version: str = f"terminal-proxy/{_package_version()}"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    # The only hosts ever dialled; empty: none.
    allowed_hosts: tuple[HostPattern, ...] = ()
    # Timeout of TCP + TLS + WebSocket handshake, seconds.
    dial_timeout: float = 10.0
    # Also offer v5/v4 channel.k8s.io subprotocols, v5 first.
    offer_v5: bool = True
    # Skip TLS certificate verification of the upstream (logged as a warning at startup).
    insecure_skip_tls_verify: bool = False
    # Keepalive ping interval, seconds; 0 disables.
    ping_interval: float = 30.0
    # How long to wait for a pong before giving up on the upstream, seconds.
    pong_timeout: float = 10.0
    # Largest frame accepted from the upstream, bytes.
    max_message_size: int = 4 * MiB


@dataclass(frozen=True, slots=True)
class BrowserConfig:
    # Allowed Origin values ("https://host[:port]", normalized); empty: same origin only; "*": any.
    allowed_origins: tuple[str, ...] = ()
    # Host header values terminals may be opened under ("host" any port, "host:port",
    # "*.example.com"); empty: any Host. Stops DNS rebinding; others get 421.
    allowed_hosts: tuple[HostPattern, ...] = ()
    # Keepalive ping interval, seconds; 0 disables.
    ping_interval: float = 30.0
    # How long to wait for a pong before giving up on the browser, seconds.
    pong_timeout: float = 10.0
    # Largest frame accepted from the browser, bytes; larger frames close with 1009.
    max_message_size: int = 1 * MiB
    # Peers whose X-Forwarded-For is extended rather than replaced.
    trusted_proxies: tuple[IPNetwork, ...] = _LOOPBACK


@dataclass(frozen=True, slots=True)
class SessionConfig:
    # Cap on session length, seconds; 0: only what the authorization grants.
    max_duration: float = 0.0
    # Close after this long without traffic either way, seconds; 0 disables.
    idle_timeout: float = 0.0
    # How long to wait for close handshakes, seconds.
    close_timeout: float = 5.0
    # Per-direction bound on bytes queued in the gateway.
    max_buffer: int = 256 * KiB
    # On SIGTERM, sessions get this long before being closed with 1001, seconds.
    shutdown_grace: float = 10.0
    # v1.terminal-proxy: how long a session whose browser dropped waits for a resume,
    # seconds; 0: no resume (the session ends with its socket).
    resume_grace: float = 300.0
    # Output bytes a resumable session keeps for the replay.
    resume_buffer: int = 1024 * KiB
    # All replay buffers of this gateway together.
    resume_memory_cap: int = 256 * 1024 * KiB
    # Sessions with a time limit: warn the browser this long before the end; 0: no warning.
    expiry_warning: float = 300.0
    # Time each granted extension adds, seconds; 0: no extensions.
    extension: float = 0.0
    # Extensions one session may get.
    max_extensions: int = 0
    # This replica's name ([a-z0-9-]{1,63}), or "" for none. Set: session ids are
    # "<replica_id>.<random>", so a load balancer can send a resume (?resume=<id>) to the
    # replica that holds the session (docs/operations.md). --replica-id overrides it.
    replica_id: str = ""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    # Live sessions plus handshakes in progress, in total; 0: no limit. Excess: 503.
    max_sessions: int = 0
    # Live sessions (and handshakes past authorization) per user; 0: no limit. Excess: 429.
    max_sessions_per_user: int = 0
    # Handshakes between request and upgrade (authorizing, dialling); 0: no limit. Excess: 503.
    max_pending_handshakes: int = 0
    # Bound on authorization + upstream dial + upgrade of one handshake, seconds; 0 disables.
    handshake_timeout: float = 30.0
    # Value of Retry-After on 503/429 refusals, seconds (rounded up to whole seconds).
    retry_after: float = 5.0
    # From connect (or a later request's first byte) to the end of the request head;
    # past it the connection is closed (408 when part of a head came). 0: no limit.
    request_head_timeout: float = 10.0
    # A kept-alive connection with no request in progress is closed after this long.
    keepalive_timeout: float = 60.0
    # Connections not upgraded to a WebSocket (idle, sending a head, or before the
    # upgrade); more are answered 503 and closed at connect. 0: no limit.
    max_http_connections: int = 1024
    # Handshakes per second per client address (IPv6: per /64), token bucket with this
    # burst, checked before authorization; more get 429 with Retry-After. 0: no limit.
    client_handshake_rate: float = 0.0
    client_handshake_burst: int = 20
    # Handshakes per second per user (the authorization's user, else the client
    # address), checked after authorization; more get 429 with Retry-After. 0: no limit.
    user_handshake_rate: float = 0.0
    user_handshake_burst: int = 10


@dataclass(frozen=True, slots=True)
class TLSConfig:
    # PEM certificate chain and private key; both or neither. Set: the listener speaks TLS
    # (https/wss), and SIGHUP reloads both files for new connections.
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # Where Prometheus /metrics (and /-/health, /-/readiness) is served; None: off.
    listen: ListenAddress | None = None


@dataclass(frozen=True, slots=True)
class AuditConfig:
    # One JSON line per session open and end.
    enabled: bool = False
    # Append to this file (reopened on SIGHUP, for log rotation); None: standard error.
    file: str | None = None


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    # Route names whose sessions are recorded (asciicast v2 + metadata JSON); []: none.
    routes: tuple[str, ...] = ()
    # Spool directory; required when routes is not empty.
    dir: str | None = None
    # Cap on one recording, bytes (a marker says it was truncated).
    max_size: int = 64 * 1024 * KiB
    # Cap on the spool; the oldest finished recordings are deleted to make room.
    spool_quota: int = 1024 * 1024 * KiB
    # required: a session that cannot be recorded is ended (4011); best_effort: it goes on
    # unrecorded and an audit event says so.
    policy: str = "best_effort"
    # Record what the user types too (passwords typed at prompts included).
    input: bool = False


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: LogLevel = "info"
    format: LogFormat = "text"


@dataclass(frozen=True, slots=True)
class KubernetesClusterConfig:
    # The name routes use (/k8s/<name>/...): lower-case letters, digits and '-'.
    name: str = ""
    # A kubeconfig file (its current context, or ``context``); or in_cluster: true for the
    # service account of the pod the gateway runs in. Exactly one of the two.
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False


@dataclass(frozen=True, slots=True)
class KubernetesIdentityConfig:
    # Header an authenticating proxy sets to the user name (e.g. X-Forwarded-User), and
    # one with the groups (comma-separated or repeated); only believed from trusted_proxies.
    user_header: str | None = None
    groups_header: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Bearer JWTs (Authorization: Bearer, or the cookie jwt_cookie) verified with the PEM
    # public keys in jwt_keys_file; issuer and audience are required with it.
    jwt_keys_file: str | None = None
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_cookie: str | None = None
    jwt_leeway: float = 30.0
    username_claim: str = "sub"
    groups_claim: str = "groups"
    # Prepended to the user name and groups before they reach the cluster (like the
    # apiserver's --oidc-username-prefix), e.g. "oidc:".
    username_prefix: str = ""
    groups_prefix: str = ""


@dataclass(frozen=True, slots=True)
class KubernetesNodeDebugConfig:
    # Groups (as the cluster sees them, groups_prefix included) whose members may open
    # node-debug terminals (kind: kubernetes-node-debug); empty: nobody (disabled).
    admin_groups: tuple[str, ...] = ()
    # The node-debug pod's image; null: provision.image.
    image: str | None = None


@dataclass(frozen=True, slots=True)
class KubernetesProvisionConfig:
    # The role the session's ServiceAccount is bound to in the target namespace.
    role_kind: Literal["ClusterRole", "Role"] = "ClusterRole"
    role_name: str = "view"
    # The terminal pod's image (required for kubernetes-provision routes) and what is run.
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    command: tuple[str, ...] = ("sleep", "infinity")
    shell: tuple[str, ...] = ("sh",)
    run_as_user: int = 1000
    cpu_request: str = "100m"
    cpu_limit: str = "500m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"
    # The API server URL written into the pod's kubeconfig, and where its egress may go.
    api_server_url: str = "https://kubernetes.default.svc"
    api_server_cidrs: tuple[IPNetwork, ...] = ()
    api_server_ports: tuple[int, ...] = (443, 6443)
    # Lifecycle: no heartbeat for heartbeat_timeout, or older than expiry, is deleted.
    heartbeat_timeout: float = 300.0
    expiry: float = 1800.0
    # v1.terminal-proxy browsers may extend a terminal's life by ``extension`` at a time
    # (0: never), up to ``max_expiry`` after its creation.
    extension: float = 1800.0
    max_expiry: float = 7200.0
    cleanup_interval: float = 60.0
    ready_timeout: float = 120.0
    # The privileged node-debug variant (hostPID, hostNetwork, the host's / at /host).
    node_debug: KubernetesNodeDebugConfig = field(default_factory=KubernetesNodeDebugConfig)


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    clusters: tuple[KubernetesClusterConfig, ...] = ()
    identity: KubernetesIdentityConfig = field(default_factory=KubernetesIdentityConfig)
    # What "kubernetes" routes run in the target container.
    command: tuple[str, ...] = ("sh",)
    # Session limit of "kubernetes" routes, seconds; 0: none.
    max_session_time: float = 0.0
    provision: KubernetesProvisionConfig = field(default_factory=KubernetesProvisionConfig)

    def cluster(self, name: str) -> KubernetesClusterConfig | None:
        return next((c for c in self.clusters if c.name == name), None)


@dataclass(frozen=True, slots=True)
class Config:
    listen: ListenAddress = field(default_factory=ListenAddress)
    routes: tuple[RouteConfig, ...] = DEFAULT_ROUTES
    authorization: AuthorizationConfig = field(default_factory=AuthorizationConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    browser: BrowserConfig = field(default_factory=BrowserConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)

    def with_overrides(
        self,
        *,
        listen: str | None = None,
        auth_backend: str | None = None,
        secret_file: str | None = None,
        allow_upstream: Sequence[str] = (),
        replica_id: str | None = None,
    ) -> Config:
        """Apply ``--listen``, ``--auth-backend``, ``--secret-file``, ``--replica-id``
        (None: flag not given) and ``--allow-upstream`` (repeatable; added to
        ``upstream.allowed_hosts``).

        Values are checked like the file's; problems are keyed by the flag name. A
        ``--secret-file`` replaces the file's ``secret_file``/``secret_env``.
        """
        problems: list[Problem] = []

        def attempt(flag: str, parse: Callable[[str], Any], value: str) -> Any:
            try:
                return parse(value)
            except (ValueError, TypeError) as exc:
                problems.append(Problem(_COMMAND_LINE, None, flag, str(exc)))
                return None

        config = self
        auth = self.authorization
        if listen is not None:
            address = attempt("--listen", _parse_listen, listen)
            if address is not None:
                config = dataclasses.replace(config, listen=address)
        if auth_backend is not None:
            backend = attempt("--auth-backend", _parse_backend, auth_backend)
            if backend is not None:
                auth = dataclasses.replace(auth, backend=backend)
        if secret_file is not None:
            secret = attempt(
                "--secret-file", lambda path: _read_secret_file(_text(path)), secret_file
            )
            if secret is not None:
                auth = dataclasses.replace(
                    auth, secret=secret, secret_file=secret_file, secret_env=None
                )
        if replica_id is not None:
            replica = attempt("--replica-id", parse_replica_id, replica_id)
            if replica is not None:
                session = dataclasses.replace(config.session, replica_id=replica)
                config = dataclasses.replace(config, session=session)
        allowed = [attempt("--allow-upstream", _parse_host_pattern, v) for v in allow_upstream]
        if allow_upstream and None not in allowed:
            upstream = dataclasses.replace(
                config.upstream, allowed_hosts=(*config.upstream.allowed_hosts, *allowed)
            )
            config = dataclasses.replace(config, upstream=upstream)
        if not problems and _lacks_secret(auth):
            problems.append(
                Problem(
                    _COMMAND_LINE,
                    None,
                    "--auth-backend",
                    _GITLAB_NEEDS_KEY + ", or give --secret-file",
                )
            )
        if problems:
            raise ConfigError(problems)
        return dataclasses.replace(config, authorization=auth)


def default_config() -> Config:
    """Return the configuration used when the file sets nothing."""
    return Config()


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


# --------------------------------------------------------------------------------------------
# Entry points


def load_config(
    text: str, *, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """Parse YAML ``text`` into a ``Config``; raise ``ConfigError`` with every problem.

    ``source`` prefixes each problem; ``environ`` (default ``os.environ``) is where
    ``authorization.secret_env`` is looked up. Relative secret paths are relative to the
    working directory.
    """
    reader = _Reader(source, os.environ if environ is None else environ)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        detail = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([Problem(source, line, "", f"invalid YAML: {detail}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(source, None, "", f"invalid YAML: {exc}")]) from None
    if root is not None and not isinstance(root, MappingNode) and not _is_null(root):
        reader.report(root, "", f"expected a mapping of settings, got {_node_kind(root)}")
        raise ConfigError(reader.problems)
    config = _CONFIG(reader, root, "")
    if reader.problems or not isinstance(config, Config):
        raise ConfigError(sorted(reader.problems, key=_problem_order))
    return config


def load_config_file(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and parse the YAML file at ``path``; problems are prefixed with the path."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            [Problem(source, None, "", f"cannot read config file: {reason}")]
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(source, line, "", "file is not UTF-8 text")]) from None
    return load_config(text, source=source, environ=environ)


def validate_for_serving(config: Config, *, source: str = "config") -> list[Problem]:
    """Return what ``serve`` needs but loading does not require (empty: ready to serve).

    Loading accepts a config without a backend, so ``check-config``, ``demo`` and tests can
    use partial files; ``serve`` calls this after applying the command-line overrides.
    """
    problems = []
    uses_api = any(route.kind == "authorization" for route in config.routes)
    if config.authorization.backend is None and uses_api:
        problems.append(
            Problem(
                source,
                None,
                "authorization.backend",
                "is required to serve (set it in the config file or give --auth-backend)",
            )
        )
    elif _lacks_secret(config.authorization):
        problems.append(Problem(source, None, "authorization.secret_file", _GITLAB_NEEDS_KEY))
    tls = config.tls
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                tls.cert_file, tls.key_file
            )
        except OSError as exc:  # ssl.SSLError included
            reason = exc.strerror or getattr(exc, "reason", None) or type(exc).__name__
            problems.append(
                Problem(
                    source,
                    None,
                    "tls.cert_file",
                    f"cannot load the certificate {tls.cert_file!r} with the key "
                    f"{tls.key_file!r}: {reason}",
                )
            )
    if not config.upstream.allowed_hosts and not config.kubernetes.clusters:
        problems.append(
            Problem(
                source,
                None,
                "upstream.allowed_hosts",
                "is empty, so no upstream could ever be dialled "
                "(list your Kubernetes API servers, e.g. kube.example.com:443, "
                "or give --allow-upstream)",
            )
        )
    return problems


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


# --------------------------------------------------------------------------------------------
# Value parsers: Python value in, typed value out, ValueError/TypeError with the message.

_DURATION_HINT: Final = "use e.g. 500ms, 30s, 5m, 1h"
_GITLAB_NEEDS_KEY: Final = (
    "the gitlab contract needs the Workhorse secret: set authorization.secret_file "
    "or authorization.secret_env"
)
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROUTE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REPLICA_ID: Final = re.compile(r"[a-z0-9-]{1,63}")
_HEADER_VALUE: Final = re.compile(r"[!-~](?:[ -~]*[!-~])?")
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value[:60]!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _text(value: object, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected {what}, got {_describe(value)}")
    if not value.strip():
        raise ValueError(f"expected {what}, got an empty string")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _env_name(value: object) -> str | None:
    if value is None:
        return None
    name = _text(value, "an environment variable name")
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(f"invalid environment variable name {name!r}")
    return name


def parse_replica_id(value: object) -> str:
    """``session.replica_id``: "" (or null) for none, else 1-63 of a-z, 0-9 and '-'."""
    if value is None or value == "":
        return ""
    text = _text(value, "a replica id")
    if not _REPLICA_ID.fullmatch(text):
        raise ValueError(
            f"invalid replica id {text!r}: use 1 to 63 lower-case letters, digits and '-' "
            "(a Kubernetes pod name fits)"
        )
    return text


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean (true or false), got {_describe(value)}")
    return value


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value)
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _duration(*, zero: bool) -> Callable[[object], float]:
    """A duration; ``zero``: 0 is allowed (it means "disabled" for this key)."""

    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError(f"expected a duration ({_DURATION_HINT}), got {_describe(value)}")
        seconds = parse_duration(value)
        if seconds == 0 and not zero:
            raise ValueError(f"must be greater than 0 ({_DURATION_HINT})")
        return seconds

    return parse


def _size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"expected a size (use e.g. 512, 64KiB, 1MiB), got {_describe(value)}")
    size = parse_size(value)
    if size < 1:
        raise ValueError("must be at least 1 byte")
    return size


def _integer(*, minimum: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {_describe(value)}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _fraction(*, maximum: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number between 0 and {maximum}, got {_describe(value)}")
        if not 0 <= value <= maximum:
            raise ValueError(f"must be between 0 and {maximum}, got {value}")
        return float(value)

    return parse


def _header_value(value: object) -> str:
    text = _text(value)
    if not _HEADER_VALUE.fullmatch(text):
        raise ValueError("must be printable ASCII without leading or trailing spaces")
    return text


def _parse_listen(value: object) -> ListenAddress:
    return ListenAddress.parse(_text(value, "HOST:PORT"))


def _optional_listen(value: object) -> ListenAddress | None:
    return None if value is None else _parse_listen(value)


def _parse_host_pattern(value: object) -> HostPattern:
    return HostPattern.parse(_text(value, "HOST:PORT"))


def _parse_browser_host(value: object) -> HostPattern:
    """A ``browser.allowed_hosts`` entry: a host pattern whose port may be left out (any)."""
    text = _text(value, "a host")
    try:
        return HostPattern.parse(text)
    except ValueError as exc:
        try:
            return HostPattern.parse(f"{text}:*")
        except ValueError:
            raise exc from None


def _parse_origin(value: object) -> str:
    return normalize_origin(_text(value, "an origin"))


def _parse_network(value: object) -> IPNetwork:
    text = _text(value, "an IP network")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid IP network: {exc}") from None


def _parse_pattern(value: object) -> re.Pattern[str]:
    text = _text(value, "a regular expression")
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from None


def _parse_route_name(value: object) -> str:
    name = _text(value, "a route name")
    if not _ROUTE_NAME.fullmatch(name):
        raise ValueError(f"invalid route name {name!r} (letters, digits, '_', '.', '-')")
    return name


def _parse_backend(value: object) -> str | None:
    if value is None:
        return None
    url = _text(value, "a URL")
    bad = f"invalid backend URL {url!r}"
    if any(char.isspace() for char in url):
        raise ValueError(bad)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{bad} (must start with http:// or https://)")
    if not parts.hostname or _normalize_host(parts.hostname) is None:
        raise ValueError(f"{bad} (no valid host)")
    if "@" in parts.netloc:
        raise ValueError(f"{bad} (must not contain credentials)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"{bad} (must not have a query or fragment)")
    try:
        parts.port  # noqa: B018  (raises for a bad port)
    except ValueError:
        raise ValueError(f"{bad} (invalid port)") from None
    return url.rstrip("/")


def _read_secret_file(path: str) -> Secret:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_SECRET_FILE + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot read secret file {path!r}: {reason}") from None
    if len(data) > _MAX_SECRET_FILE:
        raise ValueError(
            f"secret file {path!r} is too large to hold a base64 {SECRET_SIZE}-byte key"
        )
    try:
        return Secret.from_base64(data)
    except ValueError as exc:
        raise ValueError(f"secret file {path!r} {exc}") from None


def _read_secret_env(name: str, environ: Mapping[str, str]) -> Secret:
    text = environ.get(name)
    if not text:
        raise ValueError(f"environment variable {name!r} is not set or empty")
    try:
        return Secret.from_base64(text)
    except ValueError as exc:
        raise ValueError(f"environment variable {name!r} {exc}") from None


def _lacks_secret(auth: AuthorizationConfig) -> bool:
    return auth.contract == "gitlab" and auth.backend is not None and auth.secret is None


# Hosts and ports.


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _normalize_host(host: str) -> str | None:
    """Lower-case DNS name or canonical IP address (IPv6 unbracketed); None if invalid."""
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


# --------------------------------------------------------------------------------------------
# The table-driven reader: YAML nodes in, values out, problems collected on the way.

_NULL_TAG: Final = "tag:yaml.org,2002:null"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
# Reader result meaning "a problem was reported; keep the default".
_INVALID: Final = object()


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"scalar {str(node.value)[:60]!r}"


def _line(node: Node | None) -> int | None:
    return None if node is None or node.start_mark is None else int(node.start_mark.line) + 1


def _problem_order(problem: Problem) -> tuple[bool, int]:
    return (problem.line is None, problem.line or 0)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


class _Reader:
    """Shared state of one load: where problems go and how scalars are built."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()

    def report(self, node: Node | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.source, _line(node), key, message))

    def construct(self, node: Node, key: str) -> object:
        """The Python value of ``node`` as ``safe_load`` builds it, or ``_INVALID``."""
        if (
            isinstance(node, ScalarNode)
            and node.tag == _BOOL_TAG
            and str(node.value).lower() not in ("true", "false")
        ):
            self.report(
                node,
                key,
                f"write booleans as true or false (or quote the string), got {node.value!r}",
            )
            return _INVALID
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.report(node, key, f"invalid value: {problem}")
            return _INVALID

    def items(self, node: Node | None, key: str) -> list[tuple[str, Node, Node]] | None:
        """The ``(name, key node, value node)`` entries of a mapping; null counts as empty."""
        if node is None or _is_null(node):
            return []
        if not isinstance(node, MappingNode):
            self.report(node, key, f"expected a mapping, got {_node_kind(node)}")
            return None
        entries: list[tuple[str, Node, Node]] = []
        seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.report(key_node, key, "merge keys (<<) are not supported")
                continue
            name = self.construct(key_node, key)
            if not isinstance(name, str):
                if name is not _INVALID:
                    self.report(key_node, key, f"keys must be strings, got {_describe(name)}")
                continue
            if name in seen:
                first = _line(seen[name])
                self.report(
                    key_node, _join(key, name), f"duplicate key (first set on line {first})"
                )
                continue
            seen[name] = key_node
            entries.append((name, key_node, value_node))
        return entries


# A field reader: (reader, value node, key path) → value or _INVALID (problem reported).
_Field = Callable[[_Reader, Node, str], Any]


def _scalar(parse: Callable[[object], Any]) -> _Field:
    """Read one value with ``parse`` (a value parser above)."""

    def read(reader: _Reader, node: Node, key: str) -> Any:
        value = reader.construct(node, key)
        if value is _INVALID:
            return _INVALID
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            reader.report(node, key, str(exc))
            return _INVALID

    return read


def _list(parse: Callable[[object], Any], *, what: str) -> _Field:
    """Read a list whose items are each read with ``parse``; problems name ``key[i]``."""
    item_reader = _scalar(parse)

    def read(reader: _Reader, node: Node, key: str) -> Any:
        if not isinstance(node, SequenceNode):
            reader.report(node, key, f"expected a list of {what}, got {_node_kind(node)}")
            return _INVALID
        items = [item_reader(reader, item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    return read


_Finish = Callable[[_Reader, Any, Mapping[str, Node], str, Node | None], Any]


@dataclass(frozen=True, slots=True)
class _Section:
    """Read a mapping into ``cls``: ``fields`` maps each allowed key to its reader.

    ``finish(reader, value, value_nodes, key, node)`` runs after the fields, for checks that
    span several keys; it returns the final value.
    """

    cls: type[Any]
    fields: Mapping[str, _Field]
    finish: _Finish | None = None

    def __call__(self, reader: _Reader, node: Node | None, key: str) -> Any:
        entries = reader.items(node, key)
        if entries is None:
            return _INVALID
        values: dict[str, Any] = {}
        nodes: dict[str, Node] = {}
        for name, key_node, value_node in entries:
            path = _join(key, name)
            read = self.fields.get(name)
            if read is None:
                reader.report(key_node, path, _unknown_key(name, self.fields))
                continue
            nodes[name] = value_node
            value = read(reader, value_node, path)
            if value is not _INVALID:
                values[name] = value
        result = self.cls(**values)
        return result if self.finish is None else self.finish(reader, result, nodes, key, node)


def _unknown_key(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(known)})"


def _finish_authorization(
    reader: _Reader,
    auth: AuthorizationConfig,
    nodes: Mapping[str, Node],
    key: str,
    node: Node | None,
) -> AuthorizationConfig:
    secret = None
    if auth.secret_file is not None and auth.secret_env is not None:
        reader.report(
            nodes["secret_env"],
            _join(key, "secret_env"),
            "set either secret_file or secret_env, not both",
        )
    elif auth.secret_file is not None or auth.secret_env is not None:
        where = "secret_file" if auth.secret_file is not None else "secret_env"
        try:
            if auth.secret_file is not None:
                secret = _read_secret_file(auth.secret_file)
            else:
                secret = _read_secret_env(str(auth.secret_env), reader.environ)
        except ValueError as exc:
            reader.report(nodes[where], _join(key, where), str(exc))
    auth = dataclasses.replace(auth, secret=secret)
    if _lacks_secret(auth) and auth.secret_file is None and auth.secret_env is None:
        reader.report(node, _join(key, "secret_file"), _GITLAB_NEEDS_KEY)
    return auth


def _finish_tls(
    reader: _Reader, tls: TLSConfig, nodes: Mapping[str, Node], key: str, node: Node | None
) -> TLSConfig:
    if (tls.cert_file is None) != (tls.key_file is None):
        missing = "key_file" if tls.key_file is None else "cert_file"
        present = "cert_file" if missing == "key_file" else "key_file"
        reader.report(
            nodes.get(present, node), _join(key, missing), f"is required when {present} is set"
        )
    return tls


def _finish_route(
    reader: _Reader, entry: _RouteEntry, nodes: Mapping[str, Node], key: str, node: Node | None
) -> Any:
    if "pattern" not in nodes:
        if entry.kind == "authorization":
            reader.report(node, _join(key, "pattern"), "is required")
            return _INVALID
        if "kind" not in nodes:
            return _INVALID  # the kind had a problem, already reported
        entry = dataclasses.replace(
            entry, pattern=re.compile(KUBERNETES_ROUTE_PATTERNS[entry.kind])
        )
    assert entry.pattern is not None
    missing = [g for g in _ROUTE_GROUPS.get(entry.kind, ()) if g not in entry.pattern.groupindex]
    if missing:
        reader.report(
            nodes.get("pattern", node),
            _join(key, "pattern"),
            f"a {entry.kind} route needs the named groups "
            + ", ".join(f"(?P<{g}>...)" for g in missing),
        )
        return _INVALID
    return entry


@dataclass(frozen=True, slots=True)
class _RouteEntry:
    pattern: re.Pattern[str] | None = None
    name: str | None = None
    kind: RouteKind = "authorization"


_ROUTE_ENTRY: Final = _Section(
    _RouteEntry,
    {
        "pattern": _scalar(_parse_pattern),
        "name": _scalar(_parse_route_name),
        "kind": _scalar(
            _choice("authorization", "kubernetes", "kubernetes-provision", "kubernetes-node-debug")
        ),
    },
    _finish_route,
)
_ROUTE_PATTERN: Final = _scalar(_parse_pattern)


def _read_routes(reader: _Reader, node: Node, key: str) -> Any:
    """``routes``: a list of regex strings or ``{pattern, name}`` mappings."""
    if not isinstance(node, SequenceNode):
        reader.report(node, key, f"expected a list of routes, got {_node_kind(node)}")
        return _INVALID
    if not node.value:
        reader.report(node, key, "at least one route is required")
        return _INVALID
    routes: list[RouteConfig] = []
    names: dict[str, int] = {}
    failed = False
    for i, item in enumerate(node.value):
        path = f"{key}[{i}]"
        name = f"route{i + 1}"
        if isinstance(item, MappingNode):
            entry = _ROUTE_ENTRY(reader, item, path)
            if entry is _INVALID or entry.pattern is None:
                failed = True
                continue
            pattern: re.Pattern[str] = entry.pattern
            name = entry.name or name
            kind: RouteKind = entry.kind
        else:
            pattern = _ROUTE_PATTERN(reader, item, path)
            kind = "authorization"
            if pattern is _INVALID:
                failed = True
                continue
        if name in names:
            reader.report(item, path, f"duplicate route name {name!r} (also {key}[{names[name]}])")
            failed = True
            continue
        names[name] = i
        routes.append(RouteConfig(name, pattern, kind))
    return _INVALID if failed else tuple(routes)


_POSITIVE: Final = _scalar(_duration(zero=False))
_ZERO_DISABLES: Final = _scalar(_duration(zero=True))
_SIZE: Final = _scalar(_size)
_BOOLEAN: Final = _scalar(_boolean)
# Events per second; 0 disables.
_RATE: Final = _scalar(_fraction(maximum=10_000))


def _list_of(section: _Section, *, what: str) -> _Field:
    """A list of mappings, each read by ``section``."""

    def read(reader: _Reader, node: Node, key: str) -> Any:
        if not isinstance(node, SequenceNode):
            reader.report(node, key, f"expected a list of {what}, got {_node_kind(node)}")
            return _INVALID
        items = [section(reader, item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    return read


_CLUSTER_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUANTITY: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:m|k|M|G|T|Ki|Mi|Gi|Ti)?")


def _cluster_name(value: object) -> str:
    name = _text(value, "a cluster name")
    if not _CLUSTER_NAME.fullmatch(name):
        raise ValueError(f"invalid cluster name {name!r} (lower-case letters, digits and '-')")
    return name


def _header_name(value: object) -> str | None:
    if value is None:
        return None
    name = _text(value, "a header name")
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    return name


def _quantity(value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    quantity = _text(text, "a Kubernetes quantity (e.g. 500m, 256Mi)")
    if not _QUANTITY.fullmatch(quantity):
        raise ValueError(f"invalid quantity {quantity!r} (use e.g. 500m, 1, 256Mi, 1Gi)")
    return quantity


def _word(value: object) -> str:
    text = _text(value)
    if any(char.isspace() or not char.isprintable() for char in text):
        raise ValueError(f"invalid value {text!r} (no spaces)")
    return text


def _plain(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_describe(value)}")
    return value


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number 1..65535, got {_describe(value)}")
    return value


def _url(value: object) -> str:
    text = _text(value, "a URL")
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"invalid URL {text!r} (use https://host[:port])")
    return text.rstrip("/")


def _admin_group(value: object) -> str:
    group = _text(value, "a group name")
    if group.startswith("system:"):
        raise ValueError(
            f"invalid admin group {group!r} (system: groups name every user or node; "
            "name a group of your identity provider)"
        )
    return group


def _finish_cluster(
    reader: _Reader,
    cluster: KubernetesClusterConfig,
    nodes: Mapping[str, Node],
    key: str,
    node: Node | None,
) -> Any:
    if "name" not in nodes:
        reader.report(node, _join(key, "name"), "is required")
        return _INVALID
    if (cluster.kubeconfig is None) == (not cluster.in_cluster):
        reader.report(
            node, key, "set either kubeconfig (a file) or in_cluster: true, exactly one of them"
        )
        return _INVALID
    if cluster.in_cluster and cluster.context is not None:
        reader.report(nodes["context"], _join(key, "context"), "only goes with kubeconfig")
    return cluster


def _finish_identity(
    reader: _Reader,
    identity: KubernetesIdentityConfig,
    nodes: Mapping[str, Node],
    key: str,
    node: Node | None,
) -> KubernetesIdentityConfig:
    if identity.user_header is not None and not identity.trusted_proxies:
        reader.report(
            nodes["user_header"],
            _join(key, "trusted_proxies"),
            "is required with user_header: the header is only believed from these networks",
        )
    if identity.groups_header is not None and identity.user_header is None:
        reader.report(
            nodes["groups_header"], _join(key, "groups_header"), "only goes with user_header"
        )
    if identity.jwt_keys_file is None:
        return identity
    for name in ("jwt_issuer", "jwt_audience"):
        if getattr(identity, name) is None:
            reader.report(
                nodes["jwt_keys_file"], _join(key, name), "is required with jwt_keys_file"
            )
    return identity


def _finish_provision(
    reader: _Reader,
    provision: KubernetesProvisionConfig,
    nodes: Mapping[str, Node],
    key: str,
    node: Node | None,
) -> KubernetesProvisionConfig:
    if provision.heartbeat_timeout > provision.expiry:
        reader.report(
            nodes.get("heartbeat_timeout", node),
            _join(key, "heartbeat_timeout"),
            "must not be longer than expiry",
        )
    if provision.max_expiry < provision.expiry:
        reader.report(
            nodes.get("max_expiry", node),
            _join(key, "max_expiry"),
            "must not be shorter than expiry",
        )
    return provision


def _finish_config(
    reader: _Reader, config: Config, nodes: Mapping[str, Node], key: str, node: Node | None
) -> Config:
    kinds = {route.kind for route in config.routes}
    kube = config.kubernetes
    names = [cluster.name for cluster in kube.clusters]
    for name in sorted({n for n in names if names.count(n) > 1}):
        reader.report(nodes.get("kubernetes"), "kubernetes.clusters", f"duplicate name {name!r}")
    if not kinds & {"kubernetes", *PROVISION_KINDS}:
        return config
    where = nodes.get("routes")
    if not kube.clusters:
        reader.report(where, "kubernetes.clusters", "Kubernetes routes need at least one cluster")
    identity = kube.identity
    if identity.user_header is None and identity.jwt_keys_file is None:
        reader.report(
            where,
            "kubernetes.identity",
            "Kubernetes routes need a trusted identity: set user_header (with trusted_proxies) "
            "or jwt_keys_file",
        )
    if kinds & PROVISION_KINDS:
        provision = kube.provision
        if "kubernetes-provision" in kinds and provision.image is None:
            reader.report(where, "kubernetes.provision.image", "is required by provision routes")
        if (
            "kubernetes-node-debug" in kinds
            and provision.image is None
            and provision.node_debug.image is None
        ):
            reader.report(
                where,
                "kubernetes.provision.node_debug.image",
                "node-debug routes need an image (this, or kubernetes.provision.image)",
            )
        poll = config.authorization.poll_interval * (1 + config.authorization.poll_jitter)
        if not 0 < poll <= provision.heartbeat_timeout / 2:
            reader.report(
                nodes.get("authorization", where),
                "authorization.poll_interval",
                "provisioned terminals heartbeat on every re-poll: it must be on and at most "
                "half of kubernetes.provision.heartbeat_timeout (jitter included)",
            )
    return config


_KUBERNETES: Final = _Section(
    KubernetesConfig,
    {
        "clusters": _list_of(
            _Section(
                KubernetesClusterConfig,
                {
                    "name": _scalar(_cluster_name),
                    "kubeconfig": _scalar(_optional_text),
                    "context": _scalar(_optional_text),
                    "in_cluster": _scalar(_boolean),
                },
                _finish_cluster,
            ),
            what="clusters",
        ),
        "identity": _Section(
            KubernetesIdentityConfig,
            {
                "user_header": _scalar(_header_name),
                "groups_header": _scalar(_header_name),
                "trusted_proxies": _list(_parse_network, what="IP networks"),
                "jwt_keys_file": _scalar(_optional_text),
                "jwt_algorithms": _list(
                    _choice("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA"),
                    what="JWT algorithms",
                ),
                "jwt_issuer": _scalar(_optional_text),
                "jwt_audience": _scalar(_optional_text),
                "jwt_cookie": _scalar(_header_name),
                "jwt_leeway": _scalar(_duration(zero=True)),
                "username_claim": _scalar(_word),
                "groups_claim": _scalar(_word),
                "username_prefix": _scalar(_plain),
                "groups_prefix": _scalar(_plain),
            },
            _finish_identity,
        ),
        "command": _list(_text, what="strings"),
        "max_session_time": _scalar(_duration(zero=True)),
        "provision": _Section(
            KubernetesProvisionConfig,
            {
                "role_kind": _scalar(_choice("ClusterRole", "Role")),
                "role_name": _scalar(_word),
                "image": _scalar(lambda v: None if v is None else _word(v)),
                "image_pull_policy": _scalar(_choice("Always", "IfNotPresent", "Never")),
                "command": _list(_text, what="strings"),
                "shell": _list(_text, what="strings"),
                "run_as_user": _scalar(_integer(minimum=1)),
                "cpu_request": _scalar(_quantity),
                "cpu_limit": _scalar(_quantity),
                "memory_request": _scalar(_quantity),
                "memory_limit": _scalar(_quantity),
                "api_server_url": _scalar(_url),
                "api_server_cidrs": _list(_parse_network, what="IP networks"),
                "api_server_ports": _list(_port, what="ports"),
                "heartbeat_timeout": _POSITIVE,
                "expiry": _POSITIVE,
                "extension": _ZERO_DISABLES,
                "max_expiry": _POSITIVE,
                "cleanup_interval": _POSITIVE,
                "ready_timeout": _POSITIVE,
                "node_debug": _Section(
                    KubernetesNodeDebugConfig,
                    {
                        "admin_groups": _list(_admin_group, what="group names"),
                        "image": _scalar(lambda v: None if v is None else _word(v)),
                    },
                ),
            },
            _finish_provision,
        ),
    },
)

_CONFIG: Final = _Section(
    Config,
    {
        "listen": _scalar(_parse_listen),
        "routes": _read_routes,
        "authorization": _Section(
            AuthorizationConfig,
            {
                "backend": _scalar(_parse_backend),
                "contract": _scalar(_choice("gitlab", "native")),
                "secret_file": _scalar(_optional_text),
                "secret_env": _scalar(_env_name),
                "timeout": _POSITIVE,
                "poll_interval": _ZERO_DISABLES,
                "poll_jitter": _scalar(_fraction(maximum=0.5)),
                "poll_failure_grace": _scalar(_integer(minimum=1)),
                "max_response_body": _SIZE,
                "workhorse_version": _scalar(_header_value),
            },
            _finish_authorization,
        ),
        "upstream": _Section(
            UpstreamConfig,
            {
                "allowed_hosts": _list(_parse_host_pattern, what="HOST:PORT patterns"),
                "dial_timeout": _POSITIVE,
                "offer_v5": _BOOLEAN,
                "insecure_skip_tls_verify": _BOOLEAN,
                "ping_interval": _ZERO_DISABLES,
                "pong_timeout": _POSITIVE,
                "max_message_size": _SIZE,
            },
        ),
        "browser": _Section(
            BrowserConfig,
            {
                "allowed_origins": _list(_parse_origin, what="origins"),
                "allowed_hosts": _list(_parse_browser_host, what="hosts"),
                "ping_interval": _ZERO_DISABLES,
                "pong_timeout": _POSITIVE,
                "max_message_size": _SIZE,
                "trusted_proxies": _list(_parse_network, what="IP networks"),
            },
        ),
        "session": _Section(
            SessionConfig,
            {
                "max_duration": _ZERO_DISABLES,
                "idle_timeout": _ZERO_DISABLES,
                "close_timeout": _POSITIVE,
                "max_buffer": _SIZE,
                "shutdown_grace": _ZERO_DISABLES,
                "resume_grace": _ZERO_DISABLES,
                "resume_buffer": _SIZE,
                "resume_memory_cap": _SIZE,
                "expiry_warning": _ZERO_DISABLES,
                "extension": _ZERO_DISABLES,
                "max_extensions": _scalar(_integer(minimum=0)),
                "replica_id": _scalar(parse_replica_id),
            },
        ),
        "logging": _Section(
            LoggingConfig,
            {
                "level": _scalar(_choice("debug", "info", "warning", "error")),
                "format": _scalar(_choice("text", "json")),
            },
        ),
        "limits": _Section(
            LimitsConfig,
            {
                "max_sessions": _scalar(_integer(minimum=0)),
                "max_sessions_per_user": _scalar(_integer(minimum=0)),
                "max_pending_handshakes": _scalar(_integer(minimum=0)),
                "handshake_timeout": _ZERO_DISABLES,
                "retry_after": _POSITIVE,
                "request_head_timeout": _ZERO_DISABLES,
                "keepalive_timeout": _POSITIVE,
                "max_http_connections": _scalar(_integer(minimum=0)),
                "client_handshake_rate": _RATE,
                "client_handshake_burst": _scalar(_integer(minimum=1)),
                "user_handshake_rate": _RATE,
                "user_handshake_burst": _scalar(_integer(minimum=1)),
            },
        ),
        "tls": _Section(
            TLSConfig,
            {"cert_file": _scalar(_optional_text), "key_file": _scalar(_optional_text)},
            _finish_tls,
        ),
        "metrics": _Section(MetricsConfig, {"listen": _scalar(_optional_listen)}),
        "audit": _Section(AuditConfig, {"enabled": _BOOLEAN, "file": _scalar(_optional_text)}),
        "recording": _Section(
            RecordingConfig,
            {
                "routes": _list(_text, what="route names"),
                "dir": _scalar(_optional_text),
                "max_size": _SIZE,
                "spool_quota": _SIZE,
                "policy": _scalar(_choice("best_effort", "required")),
                "input": _BOOLEAN,
            },
        ),
        "kubernetes": _KUBERNETES,
    },
    _finish_config,
)
