"""Value parsers: a Python value from the YAML (or a flag) in, a typed value out, or a
ValueError/TypeError whose message the loader reports with the key's file and line."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

from ..units import parse_duration, parse_size
from .values import (
    _MAX_SECRET_FILE,
    SECRET_SIZE,
    HostPattern,
    IPNetwork,
    ListenAddress,
    Secret,
    _normalize_host,
    normalize_origin,
)

_DURATION_HINT: Final = "use e.g. 500ms, 30s, 5m, 1h"
_GITLAB_NEEDS_KEY: Final = (
    "the gitlab contract needs the Workhorse secret: set authorization.secret_file "
    "or authorization.secret_env"
)
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROUTE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REPLICA_ID: Final = re.compile(r"[a-z0-9-]{1,63}")
_HEADER_VALUE: Final = re.compile(r"[!-~](?:[ -~]*[!-~])?")


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


def _parse_internal_url(value: object) -> str:
    """A replica's internal URL: ``http(s)://HOST:PORT``, nothing after the authority."""
    url = _text(value, "a URL")
    parts = urlsplit(url)
    bad = f"invalid internal URL {url!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{bad} (must be http://HOST:PORT or https://HOST:PORT)")
    if _normalize_host(parts.hostname) is None or "@" in parts.netloc:
        raise ValueError(f"{bad} (no valid host)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{bad} (must not have a path, query or fragment)")
    try:
        parts.port  # noqa: B018  (raises for a bad port)
    except ValueError:
        raise ValueError(f"{bad} (invalid port)") from None
    return url.rstrip("/")


def _parse_peers(value: object) -> tuple[tuple[str, str], ...]:
    """``cluster.peers``: replica id -> internal URL."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of replica ids to internal URLs")
    peers = []
    for replica, url in value.items():
        name = parse_replica_id(replica)
        if not name:
            raise ValueError("a peer needs a replica id")
        peers.append((name, _parse_internal_url(url)))
    return tuple(sorted(peers))


def _parse_redis_url(value: object) -> str:
    """``cluster.redis_url``: redis:// or rediss://, a host, an optional /DB; no password
    in the URL (it would show in logs and ``ps``: use password_file)."""
    if value is None:
        return ""
    url = _text(value, "a URL")
    if not url:
        return ""
    parts = urlsplit(url)
    bad = f"invalid Redis URL {url!r}"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{bad} (must be redis://HOST:PORT/DB or rediss://HOST:PORT/DB)")
    if parts.password is not None:
        raise ValueError(f"{bad} (put the password in cluster.password_file, not the URL)")
    if parts.query or parts.fragment or not re.fullmatch(r"(/\d{0,5})?", parts.path):
        raise ValueError(f"{bad} (only a database number may follow the host)")
    try:
        parts.port  # noqa: B018  (raises for a bad port)
    except ValueError:
        raise ValueError(f"{bad} (invalid port)") from None
    return url


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
