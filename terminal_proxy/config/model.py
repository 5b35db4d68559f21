"""The configuration's sections as frozen dataclasses: their field defaults are the only
defaults (docs/configuration.md lists them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..units import KiB, MiB
from .parsers import (
    _GITLAB_NEEDS_KEY,
    _parse_backend,
    _parse_host_pattern,
    _parse_listen,
    _read_secret_file,
    _text,
    parse_replica_id,
)
from .reader import _COUNT, _POSITIVE, _SIZE, _ZERO_DISABLES, _scalar, reads
from .values import (
    _COMMAND_LINE,
    _LOOPBACK,
    DEFAULT_ROUTES,
    ConfigError,
    Contract,
    HostPattern,
    IPNetwork,
    ListenAddress,
    LogFormat,
    LogLevel,
    Problem,
    RouteConfig,
    Secret,
    _package_version,
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
    """``session:``. A key is declared once, here: its field, default and reader (``reads``);
    the session itself takes this section as it is (``session/relay.py``)."""

    # Cap on session length, seconds; 0: only what the authorization grants.
    max_duration: float = field(default=0.0, metadata=reads(_ZERO_DISABLES))
    # Close after this long without traffic either way, seconds; 0 disables.
    idle_timeout: float = field(default=0.0, metadata=reads(_ZERO_DISABLES))
    # How long to wait for close handshakes, seconds.
    close_timeout: float = field(default=5.0, metadata=reads(_POSITIVE))
    # Per-direction bound on bytes queued in the gateway.
    max_buffer: int = field(default=256 * KiB, metadata=reads(_SIZE))
    # On SIGTERM, sessions get this long before being closed with 1001, seconds.
    shutdown_grace: float = field(default=10.0, metadata=reads(_ZERO_DISABLES))
    # v1.terminal-proxy: how long a session whose browser dropped waits for a resume,
    # seconds; 0: no resume (the session ends with its socket).
    resume_grace: float = field(default=300.0, metadata=reads(_ZERO_DISABLES))
    # Output bytes a resumable session keeps for the replay.
    resume_buffer: int = field(default=1024 * KiB, metadata=reads(_SIZE))
    # All replay buffers of this gateway together.
    resume_memory_cap: int = field(default=256 * 1024 * KiB, metadata=reads(_SIZE))
    # Sessions with a time limit: warn the browser this long before the end; 0: no warning.
    expiry_warning: float = field(default=300.0, metadata=reads(_ZERO_DISABLES))
    # Time each granted extension adds, seconds; 0: no extensions.
    extension: float = field(default=0.0, metadata=reads(_ZERO_DISABLES))
    # Extensions one session may get.
    max_extensions: int = field(default=0, metadata=reads(_COUNT))
    # This replica's name ([a-z0-9-]{1,63}), or "" for none. Set: session ids are
    # "<replica_id>.<random>", so a load balancer can send a resume (?resume=<id>) to the
    # replica that holds the session (docs/operations.md). --replica-id overrides it.
    replica_id: str = field(default="", metadata=reads(_scalar(parse_replica_id)))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    # Live sessions plus handshakes in progress, in total; 0: no limit. Excess: 503.
    max_sessions: int = 0
    # Live sessions (and handshakes past authorization) per user; 0: no limit. Excess: 429.
    max_sessions_per_user: int = 0
    # Handshakes between request and upgrade (authorizing, dialling); 0: no limit. Excess: 503.
    max_pending_handshakes: int = 0
    # Viewers and writers of one shared session, the owner not counted; 0: no sharing.
    max_participants: int = 8
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
class ClusterConfig:
    """``cluster:``: several replicas serving one set of sessions (docs/cluster.md): limits,
    a session registry and revocation through Redis (off while ``redis_url`` is empty), and
    resumes and joins forwarded to the replica holding the session."""

    # redis://HOST:PORT/DB or rediss:// (TLS); "": no Redis (the default).
    redis_url: str = ""
    # File holding the Redis AUTH password (read at start); None: no password.
    password_file: str | None = None
    password: str = field(default="", repr=False)
    # CA bundle verifying a rediss:// server; None: the system's CAs.
    tls_ca_file: str | None = None
    # Lease of this replica and of each of its sessions, seconds; renewed every lease/3.
    lease: float = 15.0
    # New sessions while Redis cannot be reached: "refuse" (503) or "local" (this
    # replica's own limits only).
    on_redis_down: Literal["refuse", "local"] = "refuse"
    # Where this replica takes requests forwarded by the other replicas (resumes and joins
    # of its sessions that reached another replica); None: off. Never expose it to browsers.
    internal_listen: ListenAddress | None = None
    # How the other replicas reach internal_listen (http://HOST:PORT), for the directory.
    internal_url: str = ""
    # The other replicas' internal URLs by replica id (a static directory).
    peers: tuple[tuple[str, str], ...] = ()
    # Shared key (base64, 32 bytes) signing replica-to-replica requests, from a file or an
    # environment variable; required when internal_listen, or peers, is set.
    secret_file: str | None = None
    secret_env: str | None = None
    secret: Secret | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)

    @property
    def forwarding(self) -> bool:
        """Requests for other replicas' sessions are forwarded (else answered 404 here):
        with static peers, or with Redis as the directory."""
        return bool(self.peers) or (self.enabled and self.secret is not None)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    # One JSON line per session open and end.
    enabled: bool = False
    # Append to this file (reopened on SIGHUP, for log rotation); None: standard error.
    file: str | None = None


@dataclass(frozen=True, slots=True)
class SharingConfig:
    """``sharing:``: shared terminals (docs/sharing.md)."""

    # Route names where an owner's viewer invitation admits a joiner who is not signed in
    # (no authorization request); []: every joiner is signed in (the default).
    anonymous_viewers: tuple[str, ...] = ()


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
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
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


def _lacks_secret(auth: AuthorizationConfig) -> bool:
    return auth.contract == "gitlab" and auth.backend is not None and auth.secret is None
