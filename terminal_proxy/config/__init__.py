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

The defaults live in one place: the field defaults of the dataclasses in ``model``. The
loader is table-driven (``reader``): each section of ``schema`` is a ``_Section`` that maps
YAML keys to small readers, and a reader either returns a typed value or reports a
``Problem`` and leaves the default in place, so one pass reports every problem in the file.
YAML is composed with ``yaml.SafeLoader`` (the nodes carry line numbers) and scalars are
built by ``SafeConstructor``, i.e. ``safe_load`` semantics, plus two strictnesses: unknown
and duplicate keys are errors, and booleans must be written ``true``/``false`` (YAML 1.1
would also read ``yes``/``no``/``on``/``off``).

The Workhorse secret is read when the config is loaded (``authorization.secret_file`` or
``authorization.secret_env``) and kept in a ``Secret``, which never prints its bytes; problems
name the key and the file or variable, never the content.

Modules, in dependency order: ``values`` (secrets, addresses, routes, host syntax,
problems), ``parsers`` (value parsers), ``model`` (the sections), ``reader`` (the
table-driven reader and its field readers), ``kube_schema`` and ``schema`` (the tables:
which key is read how, cross-key checks), ``loader`` (the entry points).
"""

from __future__ import annotations

from .loader import load_config, load_config_file, validate_for_serving
from .model import (
    AuditConfig,
    AuthorizationConfig,
    BrowserConfig,
    ClusterConfig,
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
    SharingConfig,
    TLSConfig,
    UpstreamConfig,
    default_config,
)
from .parsers import parse_replica_id
from .values import (
    DEFAULT_ROUTES,
    PROVISION_KINDS,
    SECRET_SIZE,
    ConfigError,
    Contract,
    HostPattern,
    IPNetwork,
    ListenAddress,
    LogFormat,
    LogLevel,
    Problem,
    RouteConfig,
    RouteKind,
    Secret,
    normalize_origin,
)

__all__ = [
    "DEFAULT_ROUTES",
    "PROVISION_KINDS",
    "SECRET_SIZE",
    "AuditConfig",
    "AuthorizationConfig",
    "BrowserConfig",
    "ClusterConfig",
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
    "SharingConfig",
    "TLSConfig",
    "UpstreamConfig",
    "default_config",
    "load_config",
    "load_config_file",
    "normalize_origin",
    "parse_replica_id",
    "validate_for_serving",
]
