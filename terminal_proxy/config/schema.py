"""What each YAML key is read with, and the checks that span several keys: the tables
the loader walks (a new key is one line here and one field in ``model``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, SequenceNode

from .model import (
    AuditConfig,
    AuthorizationConfig,
    BrowserConfig,
    Config,
    KubernetesClusterConfig,
    KubernetesConfig,
    KubernetesIdentityConfig,
    KubernetesNodeDebugConfig,
    KubernetesProvisionConfig,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    RecordingConfig,
    SessionConfig,
    TLSConfig,
    UpstreamConfig,
    _lacks_secret,
)
from .reader import _INVALID, _Field, _join, _list, _node_kind, _Reader, _scalar, _Section
from .values import (
    _GITLAB_NEEDS_KEY,
    _ROUTE_GROUPS,
    KUBERNETES_ROUTE_PATTERNS,
    PROVISION_KINDS,
    RouteConfig,
    RouteKind,
    _boolean,
    _choice,
    _describe,
    _duration,
    _env_name,
    _fraction,
    _header_value,
    _integer,
    _optional_listen,
    _optional_text,
    _parse_backend,
    _parse_browser_host,
    _parse_host_pattern,
    _parse_listen,
    _parse_network,
    _parse_origin,
    _parse_pattern,
    _parse_route_name,
    _read_secret_env,
    _read_secret_file,
    _size,
    _text,
    parse_replica_id,
)


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
