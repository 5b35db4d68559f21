"""Config loading: defaults, every key, units, problems with file:line:key, secrets, overrides."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terminal_proxy.config import (
    AuthorizationConfig,
    Config,
    ConfigError,
    HostPattern,
    KubernetesClusterConfig,
    ListenAddress,
    Problem,
    RouteConfig,
    Secret,
    default_config,
    load_config,
    load_config_file,
    normalize_origin,
    validate_for_serving,
)
from terminal_proxy.units import format_duration, format_size, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
GITLAB_SECRET_PATH = "/var/opt/gitlab/gitlab-rails/etc/gitlab_workhorse_secret"


def problems_of(text: str, **kwargs: Any) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(text, **kwargs)
    return info.value.problems


def only_problem(text: str, **kwargs: Any) -> Problem:
    problems = problems_of(text, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def get(config: Any, path: str) -> Any:
    for name in path.split("."):
        config = getattr(config, name)
    return config


def leaf_fields(cls: type[Any], prefix: str = "") -> Iterator[str]:
    """Dotted names of every leaf field of a config dataclass."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind) and kind is not ListenAddress:
            yield from leaf_fields(kind, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "workhorse_secret"
    path.write_text(KEY_B64 + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Defaults and every key

DEFAULTS = [
    ("listen", ListenAddress("127.0.0.1", 8181)),
    ("authorization.backend", None),
    ("authorization.contract", "gitlab"),
    ("authorization.secret", None),
    ("authorization.secret_file", None),
    ("authorization.secret_env", None),
    ("authorization.timeout", 10.0),
    ("authorization.poll_interval", 60.0),
    ("authorization.poll_jitter", 0.1),
    ("authorization.poll_failure_grace", 2),
    ("authorization.max_response_body", 32 * 1024),
    ("authorization.workhorse_version", "terminal-proxy/0.1.0"),
    ("upstream.allowed_hosts", ()),
    ("upstream.dial_timeout", 10.0),
    ("upstream.offer_v5", True),
    ("upstream.insecure_skip_tls_verify", False),
    ("upstream.ping_interval", 30.0),
    ("upstream.pong_timeout", 10.0),
    ("upstream.max_message_size", 4 * 1024 * 1024),
    ("browser.allowed_origins", ()),
    ("browser.allowed_hosts", ()),
    ("browser.ping_interval", 30.0),
    ("browser.pong_timeout", 10.0),
    ("browser.max_message_size", 1024 * 1024),
    (
        "browser.trusted_proxies",
        (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")),
    ),
    ("session.max_duration", 0.0),
    ("session.idle_timeout", 0.0),
    ("session.close_timeout", 5.0),
    ("session.max_buffer", 256 * 1024),
    ("session.shutdown_grace", 10.0),
    ("session.resume_grace", 300.0),
    ("session.resume_buffer", 1024 * 1024),
    ("session.resume_memory_cap", 256 * 1024 * 1024),
    ("session.expiry_warning", 300.0),
    ("session.extension", 0.0),
    ("session.max_extensions", 0),
    ("session.replica_id", ""),
    ("logging.level", "info"),
    ("logging.format", "text"),
    ("limits.max_sessions", 0),
    ("limits.max_sessions_per_user", 0),
    ("limits.max_pending_handshakes", 0),
    ("limits.max_participants", 8),
    ("limits.handshake_timeout", 30.0),
    ("limits.retry_after", 5.0),
    ("limits.request_head_timeout", 10.0),
    ("limits.keepalive_timeout", 60.0),
    ("limits.max_http_connections", 1024),
    ("limits.client_handshake_rate", 0.0),
    ("limits.client_handshake_burst", 20),
    ("limits.user_handshake_rate", 0.0),
    ("limits.user_handshake_burst", 10),
    ("tls.cert_file", None),
    ("tls.key_file", None),
    ("metrics.listen", None),
    ("cluster.redis_url", ""),
    ("cluster.password_file", None),
    ("cluster.password", ""),
    ("cluster.tls_ca_file", None),
    ("cluster.lease", 15.0),
    ("cluster.on_redis_down", "refuse"),
    ("cluster.internal_listen", None),
    ("cluster.internal_url", ""),
    ("cluster.peers", ()),
    ("cluster.secret_file", None),
    ("cluster.secret_env", None),
    ("cluster.secret", None),
    ("audit.enabled", False),
    ("audit.file", None),
    ("sharing.anonymous_viewers", ()),
    ("recording.routes", ()),
    ("recording.dir", None),
    ("recording.max_size", 64 * 1024 * 1024),
    ("recording.spool_quota", 1024 * 1024 * 1024),
    ("recording.policy", "best_effort"),
    ("recording.input", False),
    ("kubernetes.clusters", ()),
    ("kubernetes.identity.user_header", None),
    ("kubernetes.identity.groups_header", None),
    ("kubernetes.identity.trusted_proxies", ()),
    ("kubernetes.identity.jwt_keys_file", None),
    ("kubernetes.identity.jwt_algorithms", ("RS256", "ES256")),
    ("kubernetes.identity.jwt_issuer", None),
    ("kubernetes.identity.jwt_audience", None),
    ("kubernetes.identity.jwt_cookie", None),
    ("kubernetes.identity.jwt_leeway", 30.0),
    ("kubernetes.identity.username_claim", "sub"),
    ("kubernetes.identity.groups_claim", "groups"),
    ("kubernetes.identity.username_prefix", ""),
    ("kubernetes.identity.groups_prefix", ""),
    ("kubernetes.command", ("sh",)),
    ("kubernetes.max_session_time", 0.0),
    ("kubernetes.provision.role_kind", "ClusterRole"),
    ("kubernetes.provision.role_name", "view"),
    ("kubernetes.provision.image", None),
    ("kubernetes.provision.image_pull_policy", "IfNotPresent"),
    ("kubernetes.provision.command", ("sleep", "infinity")),
    ("kubernetes.provision.shell", ("sh",)),
    ("kubernetes.provision.run_as_user", 1000),
    ("kubernetes.provision.cpu_request", "100m"),
    ("kubernetes.provision.cpu_limit", "500m"),
    ("kubernetes.provision.memory_request", "64Mi"),
    ("kubernetes.provision.memory_limit", "256Mi"),
    ("kubernetes.provision.api_server_url", "https://kubernetes.default.svc"),
    ("kubernetes.provision.api_server_cidrs", ()),
    ("kubernetes.provision.api_server_ports", (443, 6443)),
    ("kubernetes.provision.heartbeat_timeout", 300.0),
    ("kubernetes.provision.expiry", 1800.0),
    ("kubernetes.provision.extension", 1800.0),
    ("kubernetes.provision.max_expiry", 7200.0),
    ("kubernetes.provision.cleanup_interval", 60.0),
    ("kubernetes.provision.ready_timeout", 120.0),
    ("kubernetes.provision.node_debug.admin_groups", ()),
    ("kubernetes.provision.node_debug.image", None),
]


@pytest.mark.parametrize(("path", "expected"), DEFAULTS)
def test_default_values(path: str, expected: object) -> None:
    """Each key has the documented default."""
    assert get(default_config(), path) == expected


@pytest.mark.parametrize("text", ["", "{}", "~", "# only a comment\n", "logging:\n"])
def test_empty_documents_give_defaults(text: str) -> None:
    """An empty file, {}, null, or an empty section is a valid all-defaults config."""
    assert load_config(text) == default_config() == Config()


def test_default_routes() -> None:
    """The default routes are environment, job and generic, in that order."""
    assert [route.name for route in default_config().routes] == ["environment", "job", "generic"]


def test_config_is_frozen() -> None:
    """Config objects cannot be modified after loading."""
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = ListenAddress("0.0.0.0", 1)  # type: ignore[misc]


FULL = """\
listen: "[::1]:9000"
routes:
  - '^/a/terminal\\.ws\\Z'
  - {name: second, pattern: '^/b\\Z'}
authorization:
  backend: https://gitlab.example.com/prefix/
  contract: native
  secret_env: TP_SECRET
  timeout: 3s
  poll_interval: 0
  poll_jitter: 0.5
  poll_failure_grace: 5
  max_response_body: 1KB
  workhorse_version: custom/1.2
upstream:
  allowed_hosts: ["Kube.Example.com:6443", "*.svc.example.com:*"]
  dial_timeout: 1500ms
  offer_v5: false
  insecure_skip_tls_verify: true
  ping_interval: 0s
  pong_timeout: 2s
  max_message_size: 8MiB
browser:
  allowed_origins: ["https://GitLab.example.com:443", "http://localhost:3000"]
  allowed_hosts: [GitLab.example.com, "localhost:3000"]
  ping_interval: 1m
  pong_timeout: 20
  max_message_size: 65536
  trusted_proxies: ["10.0.0.0/8", "fd00::1"]
session:
  max_duration: 1h30m
  idle_timeout: 15m
  close_timeout: 2.5
  max_buffer: 1MB
  shutdown_grace: 0
  resume_grace: 1m
  resume_buffer: 64KiB
  resume_memory_cap: 128MiB
  expiry_warning: 2m
  extension: 30m
  max_extensions: 2
  replica_id: tp-1
logging:
  level: debug
  format: json
limits:
  max_sessions: 5000
  max_sessions_per_user: 20
  max_pending_handshakes: 500
  max_participants: 3
  handshake_timeout: 0
  retry_after: 30s
  request_head_timeout: 5s
  keepalive_timeout: 2m
  max_http_connections: 200
  client_handshake_rate: 2.5
  client_handshake_burst: 15
  user_handshake_rate: 0.5
  user_handshake_burst: 4
tls:
  cert_file: /etc/tp/tls.crt
  key_file: /etc/tp/tls.key
metrics:
  listen: 0.0.0.0:9181
cluster:
  redis_url: rediss://redis.example:6380/2
  password_file: null
  tls_ca_file: /etc/redis-ca.pem
  lease: 9s
  on_redis_down: local
  internal_listen: 0.0.0.0:9100
  internal_url: http://10.0.0.5:9100
  peers: {a: "http://10.0.0.5:9100", b: "http://10.0.0.6:9100"}
  secret_env: TP_SECRET
audit:
  enabled: true
  file: /var/log/terminal-proxy/audit.jsonl
sharing:
  anonymous_viewers: [route1]
recording:
  routes: [route1]
  dir: /var/spool/terminal-proxy
  max_size: 8MiB
  spool_quota: 2GiB
  policy: required
  input: true
kubernetes:
  clusters:
    - {name: dev, kubeconfig: /etc/tp/dev.kubeconfig, context: admin}
    - {name: here, in_cluster: true}
  identity:
    user_header: X-Forwarded-User
    groups_header: X-Forwarded-Groups
    trusted_proxies: [10.1.0.0/16]
    jwt_keys_file: /etc/tp/keys.pem
    jwt_algorithms: [ES256]
    jwt_issuer: https://idp.example.com
    jwt_audience: terminal-proxy
    jwt_cookie: tp_token
    jwt_leeway: 5s
    username_claim: email
    groups_claim: roles
    username_prefix: "oidc:"
    groups_prefix: "oidc:"
  command: [bash, -l]
  max_session_time: 2h
  provision:
    role_kind: Role
    role_name: terminal
    image: registry.example/tools:1
    image_pull_policy: Always
    command: [sleep, "3600"]
    shell: [bash]
    run_as_user: 2000
    cpu_request: 50m
    cpu_limit: 1
    memory_request: 32Mi
    memory_limit: 1Gi
    api_server_url: https://10.0.0.1:443/
    api_server_cidrs: [10.0.0.1/32]
    api_server_ports: [443]
    heartbeat_timeout: 2m
    expiry: 1h
    extension: 15m
    max_expiry: 4h
    cleanup_interval: 30s
    ready_timeout: 1m
    node_debug:
      admin_groups: [sre, "oidc:platform"]
      image: registry.example/node-debug:1
"""

EVERY_KEY = [
    ("listen", ListenAddress("::1", 9000)),
    (
        "routes",
        (
            RouteConfig("route1", re.compile(r"^/a/terminal\.ws\Z")),
            RouteConfig("second", re.compile(r"^/b\Z")),
        ),
    ),
    ("authorization.backend", "https://gitlab.example.com/prefix"),
    ("authorization.contract", "native"),
    ("authorization.secret", Secret(KEY)),
    ("authorization.secret_file", None),
    ("authorization.secret_env", "TP_SECRET"),
    ("authorization.timeout", 3.0),
    ("authorization.poll_interval", 0.0),
    ("authorization.poll_jitter", 0.5),
    ("authorization.poll_failure_grace", 5),
    ("authorization.max_response_body", 1000),
    ("authorization.workhorse_version", "custom/1.2"),
    (
        "upstream.allowed_hosts",
        (HostPattern("kube.example.com", 6443), HostPattern("*.svc.example.com", None)),
    ),
    ("upstream.dial_timeout", 1.5),
    ("upstream.offer_v5", False),
    ("upstream.insecure_skip_tls_verify", True),
    ("upstream.ping_interval", 0.0),
    ("upstream.pong_timeout", 2.0),
    ("upstream.max_message_size", 8 * 1024 * 1024),
    ("browser.allowed_origins", ("https://gitlab.example.com", "http://localhost:3000")),
    (
        "browser.allowed_hosts",
        (HostPattern("gitlab.example.com", None), HostPattern("localhost", 3000)),
    ),
    ("browser.ping_interval", 60.0),
    ("browser.pong_timeout", 20.0),
    ("browser.max_message_size", 65536),
    (
        "browser.trusted_proxies",
        (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::1/128")),
    ),
    ("session.max_duration", 5400.0),
    ("session.idle_timeout", 900.0),
    ("session.close_timeout", 2.5),
    ("session.max_buffer", 1_000_000),
    ("session.shutdown_grace", 0.0),
    ("session.resume_grace", 60.0),
    ("session.resume_buffer", 64 * 1024),
    ("session.resume_memory_cap", 128 * 1024 * 1024),
    ("session.expiry_warning", 120.0),
    ("session.extension", 1800.0),
    ("session.max_extensions", 2),
    ("session.replica_id", "tp-1"),
    ("logging.level", "debug"),
    ("logging.format", "json"),
    ("limits.max_sessions", 5000),
    ("limits.max_sessions_per_user", 20),
    ("limits.max_pending_handshakes", 500),
    ("limits.max_participants", 3),
    ("limits.handshake_timeout", 0.0),
    ("limits.retry_after", 30.0),
    ("limits.request_head_timeout", 5.0),
    ("limits.keepalive_timeout", 120.0),
    ("limits.max_http_connections", 200),
    ("limits.client_handshake_rate", 2.5),
    ("limits.client_handshake_burst", 15),
    ("limits.user_handshake_rate", 0.5),
    ("limits.user_handshake_burst", 4),
    ("tls.cert_file", "/etc/tp/tls.crt"),
    ("tls.key_file", "/etc/tp/tls.key"),
    ("metrics.listen", ListenAddress("0.0.0.0", 9181)),
    ("cluster.redis_url", "rediss://redis.example:6380/2"),
    # Read from a real file in test_cluster_password_file.
    ("cluster.password_file", None),
    ("cluster.password", ""),
    ("cluster.tls_ca_file", "/etc/redis-ca.pem"),
    ("cluster.lease", 9.0),
    ("cluster.on_redis_down", "local"),
    ("cluster.internal_listen", ListenAddress("0.0.0.0", 9100)),
    ("cluster.internal_url", "http://10.0.0.5:9100"),
    ("cluster.peers", (("a", "http://10.0.0.5:9100"), ("b", "http://10.0.0.6:9100"))),
    ("cluster.secret_file", None),
    ("cluster.secret_env", "TP_SECRET"),
    ("cluster.secret", Secret.from_base64(KEY_B64)),
    ("audit.enabled", True),
    ("audit.file", "/var/log/terminal-proxy/audit.jsonl"),
    ("sharing.anonymous_viewers", ("route1",)),
    ("recording.routes", ("route1",)),
    ("recording.dir", "/var/spool/terminal-proxy"),
    ("recording.max_size", 8 * 1024 * 1024),
    ("recording.spool_quota", 2 * 1024 * 1024 * 1024),
    ("recording.policy", "required"),
    ("recording.input", True),
    (
        "kubernetes.clusters",
        (
            KubernetesClusterConfig("dev", "/etc/tp/dev.kubeconfig", "admin"),
            KubernetesClusterConfig("here", in_cluster=True),
        ),
    ),
    ("kubernetes.identity.user_header", "X-Forwarded-User"),
    ("kubernetes.identity.groups_header", "X-Forwarded-Groups"),
    ("kubernetes.identity.trusted_proxies", (ipaddress.ip_network("10.1.0.0/16"),)),
    ("kubernetes.identity.jwt_keys_file", "/etc/tp/keys.pem"),
    ("kubernetes.identity.jwt_algorithms", ("ES256",)),
    ("kubernetes.identity.jwt_issuer", "https://idp.example.com"),
    ("kubernetes.identity.jwt_audience", "terminal-proxy"),
    ("kubernetes.identity.jwt_cookie", "tp_token"),
    ("kubernetes.identity.jwt_leeway", 5.0),
    ("kubernetes.identity.username_claim", "email"),
    ("kubernetes.identity.groups_claim", "roles"),
    ("kubernetes.identity.username_prefix", "oidc:"),
    ("kubernetes.identity.groups_prefix", "oidc:"),
    ("kubernetes.command", ("bash", "-l")),
    ("kubernetes.max_session_time", 7200.0),
    ("kubernetes.provision.role_kind", "Role"),
    ("kubernetes.provision.role_name", "terminal"),
    ("kubernetes.provision.image", "registry.example/tools:1"),
    ("kubernetes.provision.image_pull_policy", "Always"),
    ("kubernetes.provision.command", ("sleep", "3600")),
    ("kubernetes.provision.shell", ("bash",)),
    ("kubernetes.provision.run_as_user", 2000),
    ("kubernetes.provision.cpu_request", "50m"),
    ("kubernetes.provision.cpu_limit", "1"),
    ("kubernetes.provision.memory_request", "32Mi"),
    ("kubernetes.provision.memory_limit", "1Gi"),
    ("kubernetes.provision.api_server_url", "https://10.0.0.1:443"),
    ("kubernetes.provision.api_server_cidrs", (ipaddress.ip_network("10.0.0.1/32"),)),
    ("kubernetes.provision.api_server_ports", (443,)),
    ("kubernetes.provision.heartbeat_timeout", 120.0),
    ("kubernetes.provision.expiry", 3600.0),
    ("kubernetes.provision.extension", 900.0),
    ("kubernetes.provision.max_expiry", 14400.0),
    ("kubernetes.provision.cleanup_interval", 30.0),
    ("kubernetes.provision.ready_timeout", 60.0),
    ("kubernetes.provision.node_debug.admin_groups", ("sre", "oidc:platform")),
    ("kubernetes.provision.node_debug.image", "registry.example/node-debug:1"),
]


@pytest.mark.parametrize(("path", "expected"), EVERY_KEY)
def test_every_key_parsed(path: str, expected: object) -> None:
    """Each key in a file that sets everything reaches its field, normalized."""
    config = load_config(FULL, environ={"TP_SECRET": KEY_B64})
    assert get(config, path) == expected


def test_tables_cover_every_field() -> None:
    """The defaults and every-key tables name every field of Config."""
    fields = set(leaf_fields(Config))
    assert fields == {path for path, _ in DEFAULTS} | {"routes"}
    assert fields == {path for path, _ in EVERY_KEY}


# --------------------------------------------------------------------------------------------
# Units

GOOD_DURATIONS = [
    ("500ms", 0.5),
    ("30s", 30.0),
    ("5m", 300.0),
    ("1h", 3600.0),
    ("1h30m", 5400.0),
    ("1h 30m 15s", 5415.0),
    ("2m500ms", 120.5),
    ("1.5h", 5400.0),
    ("0", 0.0),
    ("0s", 0.0),
    (" 10s ", 10.0),
    ("45", 45.0),
    ("0.25", 0.25),
    (45, 45.0),
    (0.5, 0.5),
    (0, 0.0),
]
BAD_DURATIONS = [
    ("10 parsecs", "invalid duration '10 parsecs' (use e.g. 500ms, 30s, 5m, 1h)"),
    ("", "invalid duration ''"),
    ("s", "invalid duration 's'"),
    ("10", None),
    ("1d", "invalid duration '1d'"),
    ("30s5m", "invalid duration '30s5m'"),
    ("1h1h", "invalid duration '1h1h'"),
    ("-5s", "invalid duration '-5s'"),
    ("1e3s", "invalid duration '1e3s'"),
    ("5 m s", "invalid duration '5 m s'"),
    (-1, "duration -1 is negative"),
    (float("inf"), "invalid duration inf"),
    (float("nan"), "invalid duration nan"),
    ("9000h", "is too long"),
]


@pytest.mark.parametrize(("text", "seconds"), GOOD_DURATIONS)
def test_good_durations(text: str | float, seconds: float) -> None:
    """Durations in every accepted spelling become float seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "message"), [d for d in BAD_DURATIONS if d[1]])
def test_bad_durations(text: str | float, message: str) -> None:
    """Unreadable durations raise ValueError saying what to write."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
def test_durations_reject_other_types(value: Any) -> None:
    """Booleans, null and collections are not durations."""
    with pytest.raises(TypeError):
        parse_duration(value)


GOOD_SIZES = [
    ("512", 512),
    (512, 512),
    ("512B", 512),
    ("64KiB", 65536),
    ("64 KiB", 65536),
    ("1MiB", 1 << 20),
    ("1GiB", 1 << 30),
    ("10KB", 10_000),
    ("1MB", 1_000_000),
    ("2GB", 2_000_000_000),
]
BAD_SIZES = ["1.5MiB", "64kib", "64K", "1TiB", "-1", "", "MiB", "1 MiBs", "0x10"]


@pytest.mark.parametrize(("text", "size"), GOOD_SIZES)
def test_good_sizes(text: str | int, size: int) -> None:
    """Sizes with binary and decimal units become int bytes."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", BAD_SIZES)
def test_bad_sizes(text: str) -> None:
    """Unreadable sizes raise ValueError with an example of what to write."""
    with pytest.raises(ValueError, match=r"invalid size .*use e\.g\. 512, 64KiB, 1MiB"):
        parse_size(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.5, "500ms"), (90, "1m30s"), (5400, "1h30m"), (3600, "1h")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    """format_duration writes the short form that parse_duration reads back."""
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("size", "text"), [(512, "512"), (65536, "64KiB"), (1 << 20, "1MiB")])
def test_format_size_round_trips(size: int, text: str) -> None:
    """format_size writes the largest binary unit that parse_size reads back."""
    assert format_size(size) == text
    assert parse_size(text) == size


@given(st.integers(min_value=0, max_value=365 * 24 * 3600 * 1000))
def test_format_duration_round_trips_any_millisecond_count(millis: int) -> None:
    """Any whole number of milliseconds up to a year survives format then parse."""
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)


@given(st.integers(min_value=0, max_value=1 << 40))
def test_format_size_round_trips_any_size(size: int) -> None:
    """Any size survives format then parse."""
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("upstream: {dial_timeout: 10 parsecs}", "invalid duration '10 parsecs'"),
        ("upstream: {dial_timeout: 0}", "must be greater than 0"),
        ("upstream: {pong_timeout: 0s}", "must be greater than 0"),
        ("authorization: {timeout: 0}", "must be greater than 0"),
        ("session: {close_timeout: 0}", "must be greater than 0"),
        ("session: {max_buffer: 0}", "must be at least 1 byte"),
        ("browser: {max_message_size: 1 MiBs}", "invalid size '1 MiBs'"),
        ("browser: {ping_interval: true}", "expected a duration (use e.g. 500ms"),
        ("browser: {max_message_size: 1.5}", "expected a size"),
    ],
)
def test_unit_problems_in_config(text: str, message: str) -> None:
    """Bad durations and sizes in the file become problems on their key."""
    assert message in only_problem(text).message


@pytest.mark.parametrize(
    "path",
    [
        "authorization.poll_interval",
        "upstream.ping_interval",
        "browser.ping_interval",
        "session.max_duration",
        "session.idle_timeout",
        "session.shutdown_grace",
        "limits.handshake_timeout",
        "limits.request_head_timeout",
    ],
)
def test_zero_disables(path: str) -> None:
    """Keys documented as "0 disables" accept 0."""
    section, key = path.split(".")
    assert get(load_config(f"{section}: {{{key}: 0s}}"), path) == 0.0


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (
            "kubernetes:\n  provision:\n    expiry: 1m\n    heartbeat_timeout: 2m\n",
            4,
            "kubernetes.provision.heartbeat_timeout",
            "must not be longer than expiry",
        ),
        (
            "kubernetes:\n  provision:\n    expiry: 1h\n    max_expiry: 30m\n",
            4,
            "kubernetes.provision.max_expiry",
            "must not be shorter than expiry",
        ),
    ],
)
def test_provision_lifetimes_must_agree(text: str, line: int, key: str, message: str) -> None:
    """Heartbeat timeout, expiry and the extension ceiling are checked against each other."""
    problem = only_problem(text)
    assert (problem.line, problem.key, problem.message) == (line, key, message)


# --------------------------------------------------------------------------------------------
# Problems: file:line:key, all of them at once

UNKNOWN_KEYS = [
    ("bogus: 1\n", 1, "bogus"),
    ("logging:\n  level: info\n  colour: red\n", 3, "logging.colour"),
    ("authorization:\n  backend: null\n  secrett: x\n", 3, "authorization.secrett"),
    ("upstream:\n\n  prefer_v5: true\n", 3, "upstream.prefer_v5"),
    ("browser:\n  origins: []\n", 2, "browser.origins"),
    ("session:\n  max_buffer: 1KiB\n  timeout: 1s\n", 3, "session.timeout"),
    ("routes:\n  - pattern: x\n    nmae: y\n", 3, "routes[0].nmae"),
]


@pytest.mark.parametrize(("text", "line", "key"), UNKNOWN_KEYS)
def test_unknown_keys(text: str, line: int, key: str) -> None:
    """An unknown key at any level is a problem on its own line."""
    problem = only_problem(text, source="/etc/tp.yaml")
    assert (problem.source, problem.line, problem.key) == ("/etc/tp.yaml", line, key)
    assert problem.message.startswith("unknown key")
    assert str(problem).startswith(f"/etc/tp.yaml:{line}: {key}: unknown key")


def test_unknown_key_suggests_close_match() -> None:
    """A misspelt key names the key it resembles."""
    problem = only_problem("upstream:\n  prefer_v5: true\n")
    assert problem.message == "unknown key (did you mean 'offer_v5'?)"


def test_problem_format() -> None:
    """Problems print as file:line: key.path: message, leaving out what is unknown."""
    assert str(Problem("/etc/tp.yaml", 12, "upstream.dial_timeout", "bad")) == (
        "/etc/tp.yaml:12: upstream.dial_timeout: bad"
    )
    assert str(Problem("command line", None, "--listen", "bad")) == "command line: --listen: bad"
    assert str(Problem("f.yaml", 3, "", "invalid YAML")) == "f.yaml:3: invalid YAML"


def test_all_problems_reported_together() -> None:
    """Every problem in the file is reported, in line order, one per line."""
    text = """\
listen: nowhere
authorization:
  contract: gitlub
  timeout: 10 parsecs
upstream:
  dial_timeout: 10 parsecs
  offer_v5: "yes"
unknown: 1
"""
    with pytest.raises(ConfigError) as info:
        load_config(text, source="/etc/tp.yaml")
    assert str(info.value).splitlines() == [
        "/etc/tp.yaml:1: listen: invalid address 'nowhere' "
        "(expected HOST:PORT, e.g. 127.0.0.1:8181)",
        "/etc/tp.yaml:3: authorization.contract: expected one of gitlab, native, got 'gitlub'",
        "/etc/tp.yaml:4: authorization.timeout: invalid duration '10 parsecs' "
        "(use e.g. 500ms, 30s, 5m, 1h)",
        "/etc/tp.yaml:6: upstream.dial_timeout: invalid duration '10 parsecs' "
        "(use e.g. 500ms, 30s, 5m, 1h)",
        "/etc/tp.yaml:7: upstream.offer_v5: expected a boolean (true or false), got string 'yes'",
        "/etc/tp.yaml:8: unknown: unknown key (expected one of: listen, routes, authorization, "
        "upstream, browser, session, logging, limits, tls, metrics, cluster, audit, sharing, "
        "recording, kubernetes)",
    ]


TYPE_PROBLEMS = [
    (
        "upstream: {offer_v5: 1}",
        "upstream.offer_v5",
        "expected a boolean (true or false), got integer 1",
    ),
    ("upstream: {offer_v5: yes}", "upstream.offer_v5", "write booleans as true or false"),
    (
        "upstream: {insecure_skip_tls_verify: on}",
        "upstream.insecure_skip_tls_verify",
        "write booleans",
    ),
    (
        "upstream: {allowed_hosts: kube:443}",
        "upstream.allowed_hosts",
        "expected a list of HOST:PORT patterns, got scalar",
    ),
    (
        "upstream: {allowed_hosts: [443]}",
        "upstream.allowed_hosts[0]",
        "expected HOST:PORT, got integer 443",
    ),
    ("upstream: []", "upstream", "expected a mapping, got a list"),
    ("logging: text", "logging", "expected a mapping, got scalar 'text'"),
    ("logging: {level: 3}", "logging.level", "expected a string, got integer 3"),
    (
        "logging: {level: INFO}",
        "logging.level",
        "expected one of debug, info, warning, error, got 'INFO'",
    ),
    (
        "authorization: {poll_failure_grace: 1.5}",
        "authorization.poll_failure_grace",
        "expected an integer, got number 1.5",
    ),
    (
        "authorization: {poll_failure_grace: 0}",
        "authorization.poll_failure_grace",
        "must be at least 1, got 0",
    ),
    (
        "authorization: {poll_jitter: 0.6}",
        "authorization.poll_jitter",
        "must be between 0 and 0.5, got 0.6",
    ),
    (
        "authorization: {poll_jitter: '0.1'}",
        "authorization.poll_jitter",
        "expected a number between 0 and 0.5, got string '0.1'",
    ),
    (
        "authorization: {workhorse_version: 1.0}",
        "authorization.workhorse_version",
        "expected a string, got number 1.0",
    ),
    (
        "authorization: {workhorse_version: ' x'}",
        "authorization.workhorse_version",
        "printable ASCII",
    ),
    (
        "authorization: {secret_env: 'A-B'}",
        "authorization.secret_env",
        "invalid environment variable name 'A-B'",
    ),
    (
        "authorization: {secret_file: ''}",
        "authorization.secret_file",
        "expected a string, got an empty string",
    ),
    (
        "browser: {trusted_proxies: ['10.0.0.1/8']}",
        "browser.trusted_proxies[0]",
        "invalid IP network: 10.0.0.1/8 has host bits set",
    ),
    ("browser: {trusted_proxies: [proxy]}", "browser.trusted_proxies[0]", "invalid IP network"),
    (
        "session: {max_duration: 2024-01-01}",
        "session.max_duration",
        "expected a duration (use e.g. 500ms, 30s, 5m, 1h), got date",
    ),
    ("listen: 8181", "listen", "expected HOST:PORT, got integer 8181"),
    ("1: 2", "", "keys must be strings, got integer 1"),
]


@pytest.mark.parametrize(("text", "key", "message"), TYPE_PROBLEMS)
def test_type_and_range_problems(text: str, key: str, message: str) -> None:
    """Wrong types and out-of-range values name the key, what was expected and what was got."""
    problem = only_problem(text)
    assert (problem.line, problem.key) == (1, key)
    assert message in problem.message


YAML_PROBLEMS = [
    ("listen: [\n", 2, "", "invalid YAML"),
    ("a: 1\n  b: 2\n", 2, "", "invalid YAML: mapping values are not allowed here"),
    ("a: 1\n---\nb: 2\n", 2, "", "expected a single document"),
    ("- 1\n", 1, "", "expected a mapping of settings, got a list"),
    ("just text\n", 1, "", "expected a mapping of settings, got scalar 'just text'"),
    (
        "logging:\n  level: info\n  level: debug\n",
        3,
        "logging.level",
        "duplicate key (first set on line 2)",
    ),
    ("base: &b {level: info}\nlogging:\n  <<: *b\n", 1, "base", "unknown key"),
    ("logging:\n  <<: {level: info}\n", 2, "logging", "merge keys (<<) are not supported"),
    ("logging:\n  level: !!python/name:os.system info\n", 2, "logging.level", "invalid value"),
    ("logging: {level: !!binary aGVsbG8=}\n", 1, "logging.level", "expected a string, got bytes"),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), YAML_PROBLEMS)
def test_yaml_problems(text: str, line: int, key: str, message: str) -> None:
    """Malformed YAML, non-mapping documents, duplicates, merges and tags are problems."""
    problem = problems_of(text)[0]
    assert (problem.line, problem.key) == (line, key)
    assert message in problem.message


def test_load_config_file_prefixes_path(tmp_path: Path) -> None:
    """Problems from a file start with its path and the line."""
    path = tmp_path / "tp.yaml"
    path.write_text("logging:\n  level: loud\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value) == (
        f"{path}:2: logging.level: expected one of debug, info, warning, error, got 'loud'"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read config file: No such file or directory"), (b"a: \xff\n", "not UTF-8")],
)
def test_unreadable_config_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    """A missing or non-UTF-8 config file is a problem naming the file."""
    path = tmp_path / "tp.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


# --------------------------------------------------------------------------------------------
# Secrets


def test_secret_from_file(secret_file: Path) -> None:
    """secret_file holding base64 of 32 bytes (trailing newline allowed) loads the key."""
    config = load_config(
        f"authorization: {{backend: http://rails:8080, secret_file: '{secret_file}'}}"
    )
    assert config.authorization.secret == Secret(KEY)
    assert config.authorization.secret is not None
    assert config.authorization.secret.reveal() == KEY
    assert config.authorization.secret_file == str(secret_file)


def test_secret_from_env() -> None:
    """secret_env names an environment variable holding the base64 key."""
    config = load_config(
        "authorization: {backend: http://rails:8080, secret_env: TP_SECRET}",
        environ={"TP_SECRET": KEY_B64},
    )
    assert config.authorization.secret == Secret(KEY)
    assert config.authorization.secret_env == "TP_SECRET"


def test_secret_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without environ=, secret_env is looked up in os.environ."""
    monkeypatch.setenv("TP_TEST_SECRET", KEY_B64)
    config = load_config("authorization: {secret_env: TP_TEST_SECRET}")
    assert config.authorization.secret == Secret(KEY)


SECRET_31 = base64.b64encode(b"s3cr3t-value-of-31-bytes-long!!").decode()
SECRET_NOT_B64 = "this-is-not-base64-but-very-secret!"
BAD_SECRETS = [
    (SECRET_31, "must hold base64 text that decodes to exactly 32 bytes, not 31"),
    (SECRET_NOT_B64, "does not hold valid base64 text"),
    (
        base64.b64encode(b"k" * 35).decode(),
        "must hold base64 text that decodes to exactly 32 bytes, not 35",
    ),
    ("", "is empty"),
]


@pytest.mark.parametrize(("content", "message"), BAD_SECRETS)
def test_bad_secret_file(tmp_path: Path, content: str, message: str) -> None:
    """A wrong secret file is a problem naming key and path, never the content."""
    path = tmp_path / "secret"
    path.write_text(content + "\n")
    problem = only_problem(f"authorization:\n  secret_file: '{path}'\n")
    assert (problem.line, problem.key) == (2, "authorization.secret_file")
    assert problem.message == f"secret file '{path}' {message}"
    assert content.strip() == "" or content not in str(problem)


@pytest.mark.parametrize(("content", "message"), BAD_SECRETS)
def test_bad_secret_env(content: str, message: str) -> None:
    """A wrong secret variable is a problem naming key and variable, never the content."""
    problem = only_problem(
        "authorization:\n  secret_env: TP_SECRET\n", environ={"TP_SECRET": content}
    )
    assert (problem.line, problem.key) == (2, "authorization.secret_env")
    if content:
        assert problem.message == f"environment variable 'TP_SECRET' {message}"
        assert content not in str(problem)
    else:
        assert problem.message == "environment variable 'TP_SECRET' is not set or empty"


def test_missing_secret_file(tmp_path: Path) -> None:
    """A missing secret file is a problem naming the path."""
    path = tmp_path / "absent"
    problem = only_problem(f"authorization: {{secret_file: '{path}'}}")
    assert problem.key == "authorization.secret_file"
    assert problem.message == f"cannot read secret file '{path}': No such file or directory"


def test_secret_file_that_is_too_large(tmp_path: Path) -> None:
    """A huge secret file is refused without being read whole."""
    path = tmp_path / "big"
    path.write_text("A" * 100_000)
    problem = only_problem(f"authorization: {{secret_file: '{path}'}}")
    assert "too large" in problem.message


def test_secret_file_and_env_together(secret_file: Path) -> None:
    """Setting both secret_file and secret_env is a problem."""
    problem = only_problem(
        f"authorization:\n  secret_file: '{secret_file}'\n  secret_env: TP_SECRET\n",
        environ={"TP_SECRET": KEY_B64},
    )
    assert (problem.line, problem.key) == (3, "authorization.secret_env")
    assert "not both" in problem.message


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("authorization: {backend: http://rails:8080}", False),
        ("authorization: {backend: http://rails:8080, contract: native}", True),
        ("authorization: {contract: gitlab}", True),
    ],
)
def test_gitlab_contract_needs_secret_when_backend_set(text: str, ok: bool) -> None:
    """The gitlab contract with a backend requires a secret; native or no backend does not."""
    if ok:
        load_config(text)
    else:
        problem = only_problem(text)
        assert problem.key == "authorization.secret_file"
        assert "gitlab contract needs the Workhorse secret" in problem.message


def test_repr_never_shows_secret(secret_file: Path) -> None:
    """Neither repr nor str of the config, section or Secret shows the key."""
    config = load_config(
        f"authorization: {{backend: http://rails:8080, secret_file: '{secret_file}'}}"
    )
    secret = config.authorization.secret
    for text in (repr(config), str(config), repr(config.authorization), f"{secret}", str(secret)):
        assert KEY_B64 not in text
        assert repr(KEY) not in text
        assert KEY.hex() not in text
    assert repr(secret) == str(secret) == "Secret('***')"


def test_secret_value_semantics() -> None:
    """Secrets compare by value, hash alike, and never equal other types."""
    assert Secret(KEY) == Secret(bytes(KEY))
    assert Secret(KEY) != Secret(b"x" * 32)
    assert Secret(KEY) != KEY
    assert hash(Secret(KEY)) == hash(Secret(b"other"))
    assert Secret.from_base64(KEY_B64 + "\r\n") == Secret(KEY)


# --------------------------------------------------------------------------------------------
# Addresses, host patterns, origins, URLs

LISTEN = [
    ("127.0.0.1:8181", ListenAddress("127.0.0.1", 8181), "127.0.0.1:8181"),
    ("0.0.0.0:0", ListenAddress("0.0.0.0", 0), "0.0.0.0:0"),
    ("[::1]:8181", ListenAddress("::1", 8181), "[::1]:8181"),
    ("[::]:80", ListenAddress("::", 80), "[::]:80"),
    ("localhost:65535", ListenAddress("localhost", 65535), "localhost:65535"),
]
BAD_LISTEN = [
    "8181",
    ":8181",
    "host:",
    "host:65536",
    "host:-1",
    "host:http",
    "::1:80",
    "[::1]80",
    "[nope]:80",
    "a b:80",
    "[::1]",
    "1.2.3.999:80",
]


@pytest.mark.parametrize(("text", "address", "shown"), LISTEN)
def test_listen(text: str, address: ListenAddress, shown: str) -> None:
    """listen takes HOST:PORT or [IPV6]:PORT, port 0 allowed, and prints back the same."""
    assert load_config(f"listen: '{text}'").listen == address
    assert str(address) == shown


@pytest.mark.parametrize("text", BAD_LISTEN)
def test_bad_listen(text: str) -> None:
    """Malformed listen addresses are problems on the listen key."""
    problem = only_problem(f"listen: '{text}'")
    assert (problem.line, problem.key) == (1, "listen")
    assert problem.message.startswith("invalid ")


HOST_MATCHES = [
    ("kube.example.com:443", "kube.example.com", 443, True),
    ("kube.example.com:443", "KUBE.Example.COM", 443, True),
    ("kube.example.com:443", "kube.example.com.", 443, True),
    ("kube.example.com:443", "kube.example.com", 6443, False),
    ("kube.example.com:443", "evil.kube.example.com", 443, False),
    ("kube.example.com:443", "kube.example.com.evil", 443, False),
    ("Kube.Example.com:*", "kube.example.com", 6443, True),
    ("127.0.0.1:*", "127.0.0.1", 1, True),
    ("127.0.0.1:*", "127.0.0.2", 1, False),
    ("*.example.com:443", "a.example.com", 443, True),
    ("*.example.com:443", "a.b.example.com", 443, True),
    ("*.example.com:443", "example.com", 443, False),
    ("*.example.com:443", "aexample.com", 443, False),
    ("*.example.com:443", "a.example.com", 80, False),
    ("*.example.com:443", "a..example.com", 443, False),
    ("*.example.com:443", "a/b.example.com", 443, False),
    ("*.example.com:*", "x.example.com", 8443, True),
    ("[::1]:443", "::1", 443, True),
    ("[::1]:443", "[::1]", 443, True),
    ("[::1]:443", "0:0::1", 443, True),
    ("[::1]:443", "::2", 443, False),
    ("[::1]:443", "127.0.0.1", 443, False),
    ("10.0.0.1:6443", "10.0.0.1", 6443, True),
    ("10.0.0.1:6443", "010.0.0.1", 6443, False),
    ("kube:443", "", 443, False),
]


@pytest.mark.parametrize(("pattern", "host", "port", "expected"), HOST_MATCHES)
def test_host_pattern_matching(pattern: str, host: str, port: int, expected: bool) -> None:
    """Allowlist entries match host case-insensitively, with *. subdomains and * ports."""
    assert HostPattern.parse(pattern).matches(host, port) is expected


BAD_HOST_PATTERNS = [
    "kube.example.com",
    "*:443",
    "*:*",
    "*.:443",
    "a.*.com:443",
    "*example.com:443",
    "kube:0",
    "kube:99999",
    "kube:",
    "::1:443",
    "[::1:443",
    "[1.2.3.4]:443",
    "ku be:443",
    "*.1.2.3.4:443",
]


@pytest.mark.parametrize("text", BAD_HOST_PATTERNS)
def test_bad_host_patterns(text: str) -> None:
    """Entries without a port, with a bare *, or with a malformed host are problems."""
    problem = only_problem(f"upstream: {{allowed_hosts: ['kube:443', '{text}']}}")
    assert problem.key == "upstream.allowed_hosts[1]"
    assert problem.message.startswith("invalid ")


@pytest.mark.parametrize(
    ("text", "shown"),
    [("Kube:443", "kube:443"), ("*.Example.com:*", "*.example.com:*"), ("[::1]:443", "[::1]:443")],
)
def test_host_pattern_str(text: str, shown: str) -> None:
    """Host patterns print in their normalized form."""
    assert str(HostPattern.parse(text)) == shown


ORIGINS = [
    ("https://gitlab.example.com", "https://gitlab.example.com"),
    ("HTTPS://GitLab.Example.com:443/", "https://gitlab.example.com"),
    ("http://localhost:80", "http://localhost"),
    ("http://localhost:8080", "http://localhost:8080"),
    ("https://[::1]:8443", "https://[::1]:8443"),
    ("https://[::1]", "https://[::1]"),
    ("*", "*"),
]
BAD_ORIGINS = [
    "gitlab.example.com",
    "ftp://x",
    "https://",
    "https://x/path",
    "https://x?q",
    "https://u@x",
    "https://x:99999",
    "null",
    "https://x#",
    "https://a b",
]


@pytest.mark.parametrize(("text", "normalized"), ORIGINS)
def test_origins(text: str, normalized: str) -> None:
    """Origins are stored as browsers send them: lower-case, no default port, no slash."""
    assert normalize_origin(text) == normalized
    config = load_config(f"browser: {{allowed_origins: ['{text}']}}")
    assert config.browser.allowed_origins == (normalized,)


@pytest.mark.parametrize("text", BAD_ORIGINS)
def test_bad_origins(text: str) -> None:
    """Anything but scheme://host[:port] or * is a problem."""
    problem = only_problem(f"browser: {{allowed_origins: ['{text}']}}")
    assert problem.key == "browser.allowed_origins[0]"
    assert problem.message.startswith(f"invalid origin {text!r}")


BACKENDS = [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("https://gitlab.example.com/", "https://gitlab.example.com"),
    ("https://gitlab.example.com/gitlab/", "https://gitlab.example.com/gitlab"),
    ("http://[::1]:8080", "http://[::1]:8080"),
]
BAD_BACKENDS = [
    ("ftp://x", "must start with http:// or https://"),
    ("gitlab.example.com", "must start with http:// or https://"),
    ("http://", "no valid host"),
    ("http://user:pw@x", "must not contain credentials"),
    ("http://x/?a=1", "must not have a query or fragment"),
    ("http://x:port", "invalid port"),
    ("http://x y", "invalid backend URL"),
]


@pytest.mark.parametrize(("text", "stored"), BACKENDS)
def test_backend(text: str, stored: str) -> None:
    """The backend is an http(s) base URL with an optional prefix, kept without a final slash."""
    config = load_config(f"authorization: {{backend: '{text}', contract: native}}")
    assert config.authorization.backend == stored


@pytest.mark.parametrize(("text", "message"), BAD_BACKENDS)
def test_bad_backend(text: str, message: str) -> None:
    """Other schemes, credentials, queries and bad ports are problems."""
    problem = only_problem(f"authorization: {{backend: '{text}', contract: native}}")
    assert problem.key == "authorization.backend"
    assert message in problem.message
    assert "pw" not in problem.message or "user:pw" in text


# --------------------------------------------------------------------------------------------
# Routes

GITLAB_PATHS = [
    ("/group/project/-/environments/1/terminal.ws", "environment"),
    ("/group/sub/project/-/environments/123/terminal.ws", "environment"),
    ("/a/b/c/-/jobs/22/terminal.ws", "job"),
    ("/group/project/-/jobs/7/terminal.ws", "job"),
    ("/x/terminal.ws", "generic"),
    ("/terminal.ws", "generic"),
    ("/group/project/-/environments/x/terminal.ws", "generic"),
]
NOT_TERMINALS = [
    "/terminal.wsx",
    "/x/terminal.ws/",
    "/x/terminal.ws\n",
    "/x/terminalxws",
    "/-/environments/1/terminal.wsx",
    "x/terminal.ws",
    "/x/terminal.ws?a",
    "",
]


def first_route(config: Config, path: str) -> str | None:
    return next((route.name for route in config.routes if route.pattern.search(path)), None)


@pytest.mark.parametrize(("path", "name"), GITLAB_PATHS)
def test_default_routes_match_gitlab_paths(path: str, name: str) -> None:
    """GitLab's environment and job terminal paths hit their named default routes first."""
    assert first_route(default_config(), path) == name


@pytest.mark.parametrize("path", NOT_TERMINALS)
def test_default_routes_reject_other_paths(path: str) -> None:
    """No default route matches paths that merely resemble terminal.ws."""
    assert first_route(default_config(), path) is None


def test_route_forms() -> None:
    """Routes are regex strings (named routeN) or {pattern, name} mappings."""
    config = load_config("routes:\n  - '^/a\\Z'\n  - {pattern: '^/b\\Z', name: bee}\n")
    assert [(r.name, r.pattern.pattern) for r in config.routes] == [
        ("route1", r"^/a\Z"),
        ("bee", r"^/b\Z"),
    ]


ROUTE_PROBLEMS = [
    ("routes: []", "routes", "at least one route is required"),
    ("routes: '^/a'", "routes", "expected a list of routes"),
    ("routes: ['^/a(']", "routes[0]", "invalid regular expression '^/a(': missing )"),
    ("routes: [{name: a}]", "routes[0].pattern", "is required"),
    ("routes: [{pattern: '^/a', name: 'a b'}]", "routes[0].name", "invalid route name 'a b'"),
    (
        "routes: [{pattern: '^/a', name: x}, {pattern: '^/b', name: x}]",
        "routes[1]",
        "duplicate route name 'x'",
    ),
    ("routes: [3]", "routes[0]", "expected a regular expression, got integer 3"),
]


@pytest.mark.parametrize(("text", "key", "message"), ROUTE_PROBLEMS)
def test_route_problems(text: str, key: str, message: str) -> None:
    """Empty lists, bad regexes, missing patterns and clashing names are problems."""
    problem = only_problem(text)
    assert problem.key == key
    assert message in problem.message


# --------------------------------------------------------------------------------------------
# Command-line overrides and serving checks


def test_overrides(secret_file: Path) -> None:
    """--listen, --auth-backend and --secret-file replace the file's values."""
    base = load_config(
        "listen: 127.0.0.1:1\nauthorization: {secret_env: TP_SECRET}",
        environ={"TP_SECRET": base64.b64encode(b"o" * 32).decode()},
    )
    config = base.with_overrides(
        listen="[::1]:0", auth_backend="https://gl.example.com/", secret_file=str(secret_file)
    )
    assert config.listen == ListenAddress("::1", 0)
    assert config.authorization.backend == "https://gl.example.com"
    assert config.authorization.secret == Secret(KEY)
    assert (config.authorization.secret_file, config.authorization.secret_env) == (
        str(secret_file),
        None,
    )
    assert config.upstream == base.upstream
    assert base.with_overrides() == base


OVERRIDE_PROBLEMS = [
    ({"listen": "nowhere"}, "--listen", "invalid address 'nowhere'"),
    ({"listen": ""}, "--listen", "empty string"),
    ({"auth_backend": "ftp://x"}, "--auth-backend", "must start with http:// or https://"),
    (
        {"secret_file": "/nonexistent/secret"},
        "--secret-file",
        "cannot read secret file '/nonexistent/secret'",
    ),
    (
        {"auth_backend": "http://rails:8080"},
        "--auth-backend",
        "gitlab contract needs the Workhorse secret",
    ),
]


@pytest.mark.parametrize(("flags", "key", "message"), OVERRIDE_PROBLEMS)
def test_override_problems(flags: dict[str, str], key: str, message: str) -> None:
    """Bad flags are problems keyed by the flag name, from the command line."""
    with pytest.raises(ConfigError) as info:
        default_config().with_overrides(**flags)
    (problem,) = info.value.problems
    assert (problem.source, problem.line, problem.key) == ("command line", None, key)
    assert message in problem.message


def test_override_problems_reported_together() -> None:
    """All bad flags are reported at once."""
    with pytest.raises(ConfigError) as info:
        default_config().with_overrides(listen="x", auth_backend="y", secret_file="/nonexistent")
    assert [p.key for p in info.value.problems] == ["--listen", "--auth-backend", "--secret-file"]


def test_validate_for_serving(secret_file: Path) -> None:
    """serve needs a backend and an allowlist; a complete config has no problems."""
    assert [p.key for p in validate_for_serving(default_config(), source="tp.yaml")] == [
        "authorization.backend",
        "upstream.allowed_hosts",
    ]
    ready = load_config(
        f"authorization: {{backend: http://rails:8080, secret_file: '{secret_file}'}}\n"
        "upstream: {allowed_hosts: ['kube:443']}\n"
    )
    assert validate_for_serving(ready) == []
    unsigned = dataclasses.replace(
        ready, authorization=AuthorizationConfig(backend="http://rails:8080")
    )
    assert [p.key for p in validate_for_serving(unsigned)] == ["authorization.secret_file"]


# --------------------------------------------------------------------------------------------
# Shipped examples


def test_full_example_is_the_defaults() -> None:
    """config/terminal-proxy.example.yaml loads and spells out exactly the defaults."""
    assert load_config_file(ROOT / "config" / "terminal-proxy.example.yaml") == default_config()


def test_gitlab_example_loads(secret_file: Path) -> None:
    """config/gitlab.example.yaml loads cleanly once its secret file exists."""
    text = (ROOT / "config" / "gitlab.example.yaml").read_text()
    assert text.count(GITLAB_SECRET_PATH) == 1
    config = load_config(
        text.replace(GITLAB_SECRET_PATH, str(secret_file)), source="gitlab.example.yaml"
    )
    assert validate_for_serving(config) == []
    assert config.authorization.secret == Secret(KEY)
    assert [route.name for route in config.routes] == ["environment", "job"]
    assert config.upstream.allowed_hosts[0].matches("kube.example.com", 443)


# --------------------------------------------------------------------------------------------
# Production keys: limits, tls, metrics, audit


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("limits: {max_sessions: -1}", "limits.max_sessions", "must be at least 0"),
        ("limits: {max_sessions_per_user: 2.5}", "limits.max_sessions_per_user", "integer"),
        ("limits: {max_pending_handshakes: true}", "limits.max_pending_handshakes", "integer"),
        ("limits: {retry_after: 0}", "limits.retry_after", "greater than 0"),
        ("limits: {keepalive_timeout: 0}", "limits.keepalive_timeout", "greater than 0"),
        ("limits: {client_handshake_rate: -1}", "limits.client_handshake_rate", "between 0"),
        ("limits: {user_handshake_rate: .nan}", "limits.user_handshake_rate", "between 0"),
        ("limits: {client_handshake_burst: 0}", "limits.client_handshake_burst", "at least 1"),
        ("tls: {cert_file: /a.pem}", "tls.key_file", "is required when cert_file is set"),
        ("tls: {key_file: /a.key}", "tls.cert_file", "is required when key_file is set"),
        ("metrics: {listen: 9181}", "metrics.listen", "expected HOST:PORT"),
        ("audit: {enabled: yes}", "audit.enabled", "write booleans as true or false"),
        ("audit: {file: ''}", "audit.file", "empty string"),
    ],
)
def test_production_key_problems(text: str, key: str, message: str) -> None:
    """The limits, tls, metrics and audit sections report bad values by key."""
    problem = only_problem(text)
    assert problem.key == key and message in problem.message, problem


def test_tls_files_are_checked_for_serving(secret_file: Path, tmp_path: Path) -> None:
    """serve refuses a certificate/key pair it cannot load, naming both paths."""
    cert = tmp_path / "tls.crt"
    cert.write_text("not a certificate")
    config = load_config(
        f"authorization: {{backend: http://rails:8080, secret_file: '{secret_file}'}}\n"
        "upstream: {allowed_hosts: ['kube:443']}\n"
        f"tls: {{cert_file: '{cert}', key_file: '{tmp_path / 'missing.key'}'}}\n"
    )
    problems = validate_for_serving(config)
    assert [p.key for p in problems] == ["tls.cert_file"]
    assert str(cert) in problems[0].message


def test_cluster_password_file(tmp_path: Path) -> None:
    """The Redis password is read at start from its file (trailing newline dropped) and
    never shows in the config's repr; an unreadable file is an error naming the key."""
    password_file = tmp_path / "redis-password"
    password_file.write_text("s3cret-pw\n")
    config = load_config(
        f"cluster:\n  redis_url: redis://r:6379/0\n  password_file: {password_file}\n"
    )
    assert config.cluster.password == "s3cret-pw"
    assert "s3cret-pw" not in repr(config)
    with pytest.raises(ConfigError, match=r"cluster\.password_file: cannot read"):
        load_config(f"cluster:\n  password_file: {tmp_path / 'missing'}\n")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://r:6379", "must be redis://"),
        ("redis://:pw@r:6379/0", "password_file, not the URL"),
        ("redis://r:6379/0?x=1", "only a database number"),
        ("redis://r:99999/0", "invalid port"),
    ],
)
def test_cluster_redis_url_is_checked(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(f"cluster:\n  redis_url: {json.dumps(url)}\n")


def test_cluster_needs_a_replica_id_to_serve() -> None:
    config = load_config("cluster:\n  redis_url: redis://r:6379/0\n")
    problems = [str(p) for p in validate_for_serving(config)]
    assert any("session.replica_id: is required when cluster.redis_url" in p for p in problems)
    named = config.with_overrides(replica_id="a")
    assert not [p for p in validate_for_serving(named) if "replica_id" in str(p)]
