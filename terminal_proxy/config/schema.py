"""What each YAML key is read with, and the checks that span several keys: the tables
the loader walks (a new key is one line here and one field in ``model``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from yaml.nodes import MappingNode, Node, SequenceNode

from .kube_schema import _KUBERNETES
from .model import (
    AuditConfig,
    AuthorizationConfig,
    BrowserConfig,
    ClusterConfig,
    Config,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    RecordingConfig,
    SessionConfig,
    SharingConfig,
    TLSConfig,
    UpstreamConfig,
    _lacks_secret,
)
from .parsers import (
    _GITLAB_NEEDS_KEY,
    _choice,
    _env_name,
    _fraction,
    _header_value,
    _integer,
    _optional_listen,
    _optional_text,
    _parse_backend,
    _parse_browser_host,
    _parse_host_pattern,
    _parse_internal_url,
    _parse_listen,
    _parse_network,
    _parse_origin,
    _parse_pattern,
    _parse_peers,
    _parse_redis_url,
    _parse_route_name,
    _read_secret_env,
    _read_secret_file,
    _text,
)
from .reader import (
    _BOOLEAN,
    _INVALID,
    _POSITIVE,
    _RATE,
    _SIZE,
    _ZERO_DISABLES,
    _join,
    _list,
    _node_kind,
    _Reader,
    _scalar,
    _Section,
    fields_of,
)
from .values import (
    _ROUTE_GROUPS,
    KUBERNETES_ROUTE_PATTERNS,
    PROVISION_KINDS,
    RouteConfig,
    RouteKind,
    Secret,
)


def _finish_authorization(
    reader: _Reader,
    auth: AuthorizationConfig,
    nodes: Mapping[str, Node],
    key: str,
    node: Node | None,
) -> AuthorizationConfig:
    secret = _secret(reader, auth.secret_file, auth.secret_env, nodes, key)
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


def _secret(
    reader: _Reader,
    file: str | None,
    env: str | None,
    nodes: Mapping[str, Node],
    key: str,
) -> Secret | None:
    """A section's key from ``secret_file`` or ``secret_env`` (not both); None, and the
    problem reported, when it cannot be read."""
    if file is not None and env is not None:
        reader.report(
            nodes["secret_env"],
            _join(key, "secret_env"),
            "set either secret_file or secret_env, not both",
        )
        return None
    if file is None and env is None:
        return None
    where = "secret_file" if file is not None else "secret_env"
    try:
        if file is not None:
            return _read_secret_file(file)
        return _read_secret_env(str(env), reader.environ)
    except ValueError as exc:
        reader.report(nodes[where], _join(key, where), str(exc))
        return None


def _finish_cluster(
    reader: _Reader, cluster: ClusterConfig, nodes: Mapping[str, Node], key: str, node: Node | None
) -> ClusterConfig:
    """The replicas' signing key and the Redis password are read at start (the files may
    be mounted Secrets)."""
    if cluster.secret_file is not None or cluster.secret_env is not None:
        secret = _secret(reader, cluster.secret_file, cluster.secret_env, nodes, key)
        cluster = dataclasses.replace(cluster, secret=secret)
    elif cluster.internal_listen is not None or cluster.peers:
        reader.report(
            node,
            _join(key, "secret_file"),
            "is required when internal_listen or peers is set (it signs replica-to-replica "
            "requests; or secret_env)",
        )
    if cluster.password_file is None:
        return cluster
    try:
        with open(cluster.password_file, encoding="utf-8") as file:
            password = file.read(4097).strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        reader.report(
            nodes.get("password_file", node),
            _join(key, "password_file"),
            f"cannot read {cluster.password_file!r}: {reason}",
        )
        return cluster
    if not password or len(password) > 4096:
        reader.report(
            nodes.get("password_file", node),
            _join(key, "password_file"),
            f"{cluster.password_file!r} must hold a password of 1 to 4096 characters",
        )
        return cluster
    return dataclasses.replace(cluster, password=password)


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
        "session": _Section(SessionConfig, fields_of(SessionConfig)),
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
                "max_participants": _scalar(_integer(minimum=0)),
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
        "cluster": _Section(
            ClusterConfig,
            {
                "redis_url": _scalar(_parse_redis_url),
                "password_file": _scalar(_optional_text),
                "tls_ca_file": _scalar(_optional_text),
                "lease": _POSITIVE,
                "on_redis_down": _scalar(_choice("refuse", "local")),
                "internal_listen": _scalar(_optional_listen),
                "internal_url": _scalar(_parse_internal_url),
                "peers": _scalar(_parse_peers),
                "secret_file": _scalar(_optional_text),
                "secret_env": _scalar(_env_name),
            },
            _finish_cluster,
        ),
        "audit": _Section(AuditConfig, {"enabled": _BOOLEAN, "file": _scalar(_optional_text)}),
        "sharing": _Section(SharingConfig, {"anonymous_viewers": _list(_text, what="route names")}),
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
