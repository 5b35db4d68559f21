"""The ``kubernetes:`` section's tables: clusters, identity, node-debug and provisioned
terminals, with their value parsers and cross-key checks (docs/kubernetes.md)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from yaml.nodes import Node

from .model import (
    KubernetesClusterConfig,
    KubernetesConfig,
    KubernetesIdentityConfig,
    KubernetesNodeDebugConfig,
    KubernetesProvisionConfig,
)
from .parsers import (
    _boolean,
    _choice,
    _describe,
    _duration,
    _integer,
    _optional_text,
    _parse_network,
    _text,
)
from .reader import (
    _INVALID,
    _POSITIVE,
    _ZERO_DISABLES,
    _join,
    _list,
    _list_of,
    _Reader,
    _scalar,
    _Section,
)

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
