"""The entry points: load a configuration from text or a file, and what ``serve`` needs
beyond loading."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

import yaml
from yaml.nodes import MappingNode

from .model import Config, _lacks_secret
from .parsers import _GITLAB_NEEDS_KEY
from .reader import _is_null, _node_kind, _problem_order, _Reader
from .schema import _CONFIG
from .values import ConfigError, Problem

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
    if config.cluster.enabled and not config.session.replica_id:
        problems.append(
            Problem(
                source,
                None,
                "session.replica_id",
                "is required when cluster.redis_url is set (session ids and leases name "
                "the replica that holds them; --replica-id or $TERMINAL_PROXY_REPLICA_ID)",
            )
        )
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
    cluster = config.cluster
    if (cluster.internal_listen is not None or cluster.peers) and not config.session.replica_id:
        problems.append(
            Problem(
                source,
                None,
                "session.replica_id",
                "is required when cluster.internal_listen or cluster.peers is set (session "
                "ids name the replica that holds them; or give --replica-id)",
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
