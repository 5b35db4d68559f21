"""terminal-proxy's own JSON contract (docs/authorization-api.md).

Same request as the GitLab contract (path + ``/authorize``, browser headers), signed
with ``Terminal-Proxy-Api-Request`` when a secret is configured. A 200 with
``application/json`` authorizes and can name the user, which goes into logs and limits.
"""

from __future__ import annotations

from typing import Any

from ..channel import ConnectionDetails
from ..errors import InvalidAuthorization
from . import Grant, JoinGrant, RecordingRequest
from .http import HttpAuthorizer, load_json, media_type

__all__ = ["NativeAuthorizer"]

_NAMES = {
    "url": "connection.url",
    "subprotocols": "connection.subprotocols",
    "headers": "connection.headers",
    "ca_pem": "connection.ca_pem",
    "max_session_time": "connection.max_session_time",
}
_CONNECTION_KEYS = frozenset(_NAMES)
_TOP_KEYS = frozenset({"version", "user", "connection", "recording"})
# An answer to a join (docs/authorization-api.md, "Joins"): who, and as what.
_JOIN_KEYS = frozenset({"version", "user", "role"})


def _bad(name: str, why: str) -> InvalidAuthorization:
    return InvalidAuthorization(
        f"authorization API returned invalid connection details: {name} {why}"
    )


class NativeAuthorizer(HttpAuthorizer):
    """Parses the native contract's JSON document."""

    jwt_header = "Terminal-Proxy-Api-Request"
    jwt_issuer = "terminal-proxy"

    def extra_headers(self) -> list[tuple[str, str]]:
        return [("Accept", "application/json")]

    def parse(self, content_type: str, body: bytes) -> Grant:
        doc = _document(content_type, body, _TOP_KEYS, "is not a known field")
        connection = doc.get("connection")
        if not isinstance(connection, dict):
            raise _bad("connection", "must be an object")
        for key in connection:
            if key not in _CONNECTION_KEYS:
                raise _bad(f"connection.{key}", "is not a known field")
        details = ConnectionDetails.build(
            url=connection.get("url"),
            subprotocols=connection.get("subprotocols"),
            headers=connection.get("headers"),
            ca_pem=connection.get("ca_pem"),
            max_session_time=connection.get("max_session_time"),
            names=_NAMES,
        )
        user, groups = _user(doc.get("user"))
        recording = _recording(doc.get("recording"))
        return Grant(details, user=user, groups=groups, recording=recording)

    def parse_join(self, content_type: str, body: bytes) -> JoinGrant:
        doc = _document(
            content_type, body, _JOIN_KEYS, "is not a known field of an answer to a join"
        )
        role = doc.get("role")
        if role is not None and role not in ("viewer", "writer"):
            raise _bad("role", "must be 'viewer' or 'writer'")
        user, groups = _user(doc.get("user"))
        return JoinGrant(role, user=user, groups=groups)


def _document(
    content_type: str, body: bytes, known: frozenset[str], unknown: str
) -> dict[str, Any]:
    """A 200 answer's JSON object: its content type, its keys (``known``; others are
    refused with ``unknown``) and its version checked."""
    if media_type(content_type) != "application/json":
        raise InvalidAuthorization(
            f"authorization API answered 200 with content type "
            f"{media_type(content_type) or 'none'!r}, expected application/json"
        )
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise _bad("(document)", "must be a JSON object")
    for key in doc:
        if key not in known:
            raise _bad(str(key), unknown)
    version = doc.get("version", 1)
    if isinstance(version, bool) or version != 1:
        raise _bad("version", "must be 1")
    return doc


def _recording(value: Any) -> RecordingRequest | None:
    """``recording``: {"enabled": bool, "required": bool, "input": bool} (docs/recording.md)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("recording", "must be an object")
    for key in value:
        if key not in ("enabled", "required", "input"):
            raise _bad(f"recording.{key}", "is not a known field")
    flags: dict[str, bool | None] = {}
    for key in ("enabled", "required", "input"):
        flag = value.get(key)
        if flag is not None and not isinstance(flag, bool):
            raise _bad(f"recording.{key}", "must be true or false")
        flags[key] = flag
    if flags["enabled"] is None:
        raise _bad("recording.enabled", "is required")
    return RecordingRequest(bool(flags["enabled"]), flags["required"], flags["input"])


def _user(value: Any) -> tuple[str | None, tuple[str, ...]]:
    if value is None:
        return None, ()
    if not isinstance(value, dict):
        raise _bad("user", "must be an object")
    for key in value:
        if key not in ("id", "username", "groups"):
            raise _bad(f"user.{key}", "is not a known field")
    username, user_id = value.get("username"), value.get("id")
    if username is not None and not isinstance(username, str):
        raise _bad("user.username", "must be a string")
    if user_id is not None and (not isinstance(user_id, str | int) or isinstance(user_id, bool)):
        raise _bad("user.id", "must be a string or an integer")
    name = username if username is not None else user_id
    if isinstance(user_id, int) and user_id < 0:
        raise _bad("user.id", "must not be negative")
    groups = value.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise _bad("user.groups", "must be a list of strings")
    return (None if name is None else str(name)), tuple(groups)
