"""terminal-proxy's own browser subprotocol, ``v1.terminal-proxy`` (docs/browser-protocol.md).

BINARY frames carry terminal bytes: output (stdout and stderr merged, as a terminal shows
them) from the gateway, input from the browser. TEXT frames carry one JSON object each,
a control message with a ``type``:

* gateway → browser: ``hello``, ``exit``, ``expiry``, ``extension``, ``ack``;
* browser → gateway: ``resize``, ``resume``, ``ack``, ``extend``, ``eof``.

Unknown ``type`` values are ignored (newer peers may add messages); malformed JSON, a
missing or ill-typed field is a ProtocolError. Only the browser side (SERVER role) is
used by the gateway; the CLIENT role is what a browser speaks (the tests' client uses it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from .base import Frame, Opcode, ProtocolError, Role
from .events import (
    STDOUT,
    Ack,
    Event,
    Exit,
    ExpiryWarning,
    ExtensionAnswer,
    ExtensionRequest,
    Hello,
    JoinToken,
    Output,
    Resize,
    Resume,
    ShareRequest,
    SharingNotice,
    Stdin,
    StdinClosed,
)

__all__ = ["TERMINAL_PROXY", "TerminalProxyCodec", "terminal_proxy_codec"]

TERMINAL_PROXY: Final = "v1.terminal-proxy"

_NOTHING: Final[tuple[()]] = ()
# Offsets are byte counts; JSON numbers stay exact up to 2**53.
_MAX_OFFSET: Final = 2**53
_MAX_TEXT: Final = 256


def _json(doc: dict[str, Any]) -> Frame:
    return (Opcode.TEXT, json.dumps(doc, separators=(",", ":")).encode())


def _int(doc: dict[str, Any], key: str, *, maximum: int = _MAX_OFFSET) -> int:
    value = doc.get(key)
    if type(value) is not int or not 0 <= value <= maximum:
        raise ProtocolError(f"{doc.get('type')}: {key} must be an integer 0..{maximum}")
    return value


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise ProtocolError(f"{doc.get('type')}: {key} must be a non-empty string")
    return value


def _seconds(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or value < 0:
        raise ProtocolError(f"{doc.get('type')}: {key} must be a number of seconds")
    return float(value)


def _parse(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"control message is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise ProtocolError("control message must be a JSON object with a string 'type'")
    return doc


class TerminalProxyCodec:
    """``v1.terminal-proxy`` seen from one role (see the module docstring)."""

    __slots__ = ("_client", "byte_stream", "name", "role")

    def __init__(self, role: Role) -> None:
        if not isinstance(role, Role):
            raise ValueError(f"not a role: {role!r}")
        self.name: str = TERMINAL_PROXY
        # Terminal bytes are a stream, but exit status and control travel in-band.
        self.byte_stream: bool = False
        self.role: Final = role
        self._client: Final = role is Role.CLIENT

    def __repr__(self) -> str:
        return f"TerminalProxyCodec({self.role})"

    # decode ---------------------------------------------------------------------------

    def decode(self, opcode: Opcode, payload: bytes) -> Sequence[Event]:
        if opcode == Opcode.BINARY:
            if not payload:
                return _NOTHING
            return (Output(payload),) if self._client else (Stdin(payload),)
        doc = _parse(payload)
        kind = doc["type"]
        if self._client:
            return self._decode_from_gateway(kind, doc)
        return self._decode_from_browser(kind, doc)

    def _decode_from_browser(self, kind: str, doc: dict[str, Any]) -> Sequence[Event]:
        if kind == "resize":
            return (Resize(_int(doc, "cols", maximum=65535), _int(doc, "rows", maximum=65535)),)
        if kind == "resume":
            return (
                Resume(
                    session=_text(doc, "session"),
                    token=_text(doc, "token"),
                    received=_int(doc, "received"),
                    sent=_int(doc, "sent"),
                ),
            )
        if kind == "ack":
            return (Ack(received=_int(doc, "received")),)
        if kind == "extend":
            return (ExtensionRequest(),)
        if kind == "eof":
            return (StdinClosed(),)
        if kind == "join":
            return (JoinToken(_text(doc, "token")),)
        if kind in _SHARE_REQUESTS:
            return (_share_request(kind, doc),)
        return _NOTHING

    def _decode_from_gateway(self, kind: str, doc: dict[str, Any]) -> Sequence[Event]:
        if kind == "hello":
            return (
                Hello(
                    session=_text(doc, "session"),
                    token=_text(doc, "token"),
                    offset=_int(doc, "offset"),
                    input=_int(doc, "input"),
                    resumed=doc.get("resumed") is True,
                    reset=doc.get("reset") is True,
                    expires_in=_seconds(doc, "expires_in"),
                    resume_grace=_seconds(doc, "resume_grace"),
                ),
            )
        if kind == "exit":
            code = doc.get("code")
            if code is not None and type(code) is not int:
                raise ProtocolError("exit: code must be an integer or null")
            reason = doc.get("reason", "")
            return (Exit(code, reason if isinstance(reason, str) else ""),)
        if kind == "expiry":
            expires_in = _seconds(doc, "expires_in")
            if expires_in is None:
                raise ProtocolError("expiry: expires_in is required")
            return (ExpiryWarning(expires_in, doc.get("extendable") is True),)
        if kind == "extension":
            reason = doc.get("reason", "")
            return (
                ExtensionAnswer(
                    granted=doc.get("granted") is True,
                    expires_in=_seconds(doc, "expires_in"),
                    reason=reason if isinstance(reason, str) else "",
                ),
            )
        if kind == "ack":
            return (Ack(input=_int(doc, "input")),)
        return _NOTHING

    def plain_output(self, opcode: Opcode, payload: bytes) -> tuple[int, bytes] | None:
        if self._client and opcode == Opcode.BINARY and payload:
            return (STDOUT, payload)
        return None

    # encode ---------------------------------------------------------------------------

    def encode(self, event: Event) -> Sequence[Frame]:
        if self._client:
            if type(event) is Stdin:
                data = event.data
                return ((Opcode.BINARY, data),) if data else _NOTHING
            if type(event) is Resize:
                return (_json({"type": "resize", "cols": event.width, "rows": event.height}),)
            if type(event) is Resume:
                return (
                    _json(
                        {
                            "type": "resume",
                            "session": event.session,
                            "token": event.token,
                            "received": event.received,
                            "sent": event.sent,
                        }
                    ),
                )
            if type(event) is Ack and event.received is not None:
                return (_json({"type": "ack", "received": event.received}),)
            if type(event) is ExtensionRequest:
                return (_json({"type": "extend"}),)
            if type(event) is StdinClosed:
                return (_json({"type": "eof"}),)
            return _NOTHING
        if type(event) is Output:
            data = event.data
            return ((Opcode.BINARY, data),) if data else _NOTHING
        if type(event) is Hello:
            return (
                _json(
                    {
                        "type": "hello",
                        "session": event.session,
                        "token": event.token,
                        "offset": event.offset,
                        "input": event.input,
                        "resumed": event.resumed,
                        "reset": event.reset,
                        "expires_in": _round(event.expires_in),
                        "resume_grace": _round(event.resume_grace),
                    }
                    | _sharing_fields(event)
                ),
            )
        if type(event) is SharingNotice:
            return (_json({"type": event.type, **dict(event.fields)}),)
        if type(event) is Exit:
            return (_json({"type": "exit", "code": event.code, "reason": event.message}),)
        if type(event) is ExpiryWarning:
            return (
                _json(
                    {
                        "type": "expiry",
                        "expires_in": _round(event.expires_in),
                        "extendable": event.extendable,
                    }
                ),
            )
        if type(event) is ExtensionAnswer:
            doc: dict[str, Any] = {"type": "extension", "granted": event.granted}
            if event.expires_in is not None:
                doc["expires_in"] = _round(event.expires_in)
            if event.reason:
                doc["reason"] = event.reason
            return (_json(doc),)
        if type(event) is Ack and event.input is not None:
            return (_json({"type": "ack", "input": event.input}),)
        return _NOTHING


# The owner's sharing requests (docs/sharing.md) and the roles a joiner can have.
_SHARE_REQUESTS = frozenset(
    {"invite", "invitations", "revoke", "set_role", "remove", "end_sharing", "size_control"}
)
_JOIN_ROLES = ("viewer", "writer")
# Longest an invitation may be asked to live, seconds (the gateway may cap it lower).
_MAX_INVITATION_S = 7 * 24 * 3600.0


def _role(doc: dict[str, Any]) -> str:
    role = doc.get("role")
    if role not in _JOIN_ROLES:
        raise ProtocolError(f"{doc['type']}: role must be 'viewer' or 'writer'")
    return str(role)


def _share_request(kind: str, doc: dict[str, Any]) -> ShareRequest:
    if kind == "invite":
        expires_in = _seconds(doc, "expires_in")
        if expires_in is not None and not 0 < expires_in <= _MAX_INVITATION_S:
            raise ProtocolError("invite: expires_in must be in (0, 604800]")
        uses = doc.get("uses", 1)
        if uses not in (0, 1) or isinstance(uses, bool):
            raise ProtocolError("invite: uses must be 1 (single use) or 0 (until it expires)")
        return ShareRequest(kind, role=_role(doc), expires_in=expires_in, uses=int(uses))
    if kind == "revoke":
        return ShareRequest(kind, invitation=_text(doc, "invitation"))
    if kind == "set_role":
        return ShareRequest(kind, participant=_text(doc, "participant"), role=_role(doc))
    if kind == "remove":
        return ShareRequest(kind, participant=_text(doc, "participant"))
    if kind == "size_control":
        if doc.get("participant") is None:
            return ShareRequest(kind)
        return ShareRequest(kind, participant=_text(doc, "participant"))
    return ShareRequest(kind)


def _sharing_fields(hello: Hello) -> dict[str, Any]:
    if hello.role is None:
        return {}
    return {"role": hello.role, "participant": hello.participant}


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def terminal_proxy_codec(name: str, role: Role) -> TerminalProxyCodec:
    """The codec for ``v1.terminal-proxy`` (KeyError for other names)."""
    if name != TERMINAL_PROXY:
        raise KeyError(name)
    return TerminalProxyCodec(role)
