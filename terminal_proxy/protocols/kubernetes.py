"""Kubernetes remote-command WebSocket codecs: ``channel.k8s.io`` and its versions.

Wire format (kube-apiserver / kubelet ``wsstream``):

* binary protocols (``channel.k8s.io``, ``v4.channel.k8s.io``, ``v5.channel.k8s.io``) send
  BINARY frames ``[stream id byte][payload]``;
* base64 protocols (``base64.channel.k8s.io``, ``v4.base64.channel.k8s.io``) send TEXT frames
  whose first character is the ASCII digit ``'0' + id`` followed by standard padded base64 of
  the payload. There is no base64 variant of v5.

Decoding accepts a frame whatever its opcode (TEXT or BINARY), as Workhorse does. Streams:
0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize, 255 close signal (v5 only).

Decisions where the brief was silent, following the Kubernetes sources:

* Stream 3 carries one document per frame. v4/v5 carry ``json.Marshal(metav1.Status)`` (on
  success too); v1 carries the Status ``message`` as plain text, and only on failure (the
  kubelet's ``v1WriteStatusFunc``), so a v1 session that ends with no stream-3 frame
  succeeded; the relay, not the codec, concludes that at close.
* An empty frame, or a frame with a stream byte and no payload, carries nothing, with one
  exception: a v5 close frame must be exactly ``[255, 0]``.
* A frame for a stream the receiving role does not read is dropped without looking at its
  payload (the kubelet and client-go do the same), so its base64 is not validated either.
* Resize JSON keys match case-insensitively, as Go's ``encoding/json`` does; extra keys are
  ignored; several JSON documents in one frame are rejected. The resize frame we send has no
  trailing newline (kubectl's ``json.Encoder`` adds one; the server side decodes a stream,
  so both work).
* ``parse_status`` follows client-go's ``errorDecoderV4``; see its docstring.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Sequence
from typing import Any, Final

from .base import Frame, Opcode, ProtocolError, Role
from .events import STDERR, STDOUT, Event, Exit, Output, Resize, Stdin, StdinClosed

__all__ = [
    "BASE64_V1",
    "BASE64_V4",
    "KUBERNETES_PROTOCOLS",
    "STREAM_CLOSE",
    "STREAM_ERROR",
    "STREAM_RESIZE",
    "STREAM_STDERR",
    "STREAM_STDIN",
    "STREAM_STDOUT",
    "V1",
    "V4",
    "V5",
    "KubernetesClientCodec",
    "KubernetesServerCodec",
    "exit_message",
    "kubernetes_codec",
    "parse_status",
    "status_json",
]

V5: Final = "v5.channel.k8s.io"
V4: Final = "v4.channel.k8s.io"
BASE64_V4: Final = "v4.base64.channel.k8s.io"
V1: Final = "channel.k8s.io"
BASE64_V1: Final = "base64.channel.k8s.io"

# name -> (version, base64)
KUBERNETES_PROTOCOLS: Final[dict[str, tuple[int, bool]]] = {
    V5: (5, False),
    V4: (4, False),
    BASE64_V4: (4, True),
    V1: (1, False),
    BASE64_V1: (1, True),
}

STREAM_STDIN: Final = 0
STREAM_STDOUT: Final = 1
STREAM_STDERR: Final = 2
STREAM_ERROR: Final = 3
STREAM_RESIZE: Final = 4
STREAM_CLOSE: Final = 255

_NOTHING: Final[tuple[()]] = ()
_STDIN_CLOSED: Final = (StdinClosed(),)
_CLOSE_STDIN_FRAME: Final[tuple[Frame, ...]] = ((Opcode.BINARY, bytes((STREAM_CLOSE, 0))),)
_EOT: Final = b"\x04"
_MAX_SIZE: Final = 0xFFFF  # Go's TerminalSize fields are uint16
_DIGITS: Final = frozenset("0123456789")

# Prefix per stream id: the raw byte, or the ASCII digit '0' + id for base64.
_BINARY_PREFIX: Final = tuple(bytes((i,)) for i in range(256))
_TEXT_PREFIX: Final = tuple(bytes(((0x30 + i) & 0xFF,)) for i in range(256))

_SUCCESS: Final = b'{"metadata":{},"status":"Success"}'
_UNKNOWN_ERROR: Final = "unknown error"


def _b64decode(payload: bytes) -> bytes:
    """Standard padded base64 of everything after the stream digit, strictly validated.

    ``binascii.a2b_base64(..., strict_mode=True)`` is exactly what
    ``base64.b64decode(x, validate=True)`` runs on Python 3.11+, minus its copy of a
    memoryview argument.
    """
    try:
        return binascii.a2b_base64(memoryview(payload)[1:], strict_mode=True)
    except binascii.Error as exc:
        raise ProtocolError(f"invalid base64 in frame: {exc}") from None


class _KubernetesCodec:
    """Framing shared by both roles: stream prefixes, base64 or raw, TEXT or BINARY."""

    __slots__ = ("_b64", "_opcode", "_prefix", "byte_stream", "name", "version")

    def __init__(self, version: int, *, base64: bool = False) -> None:
        if version not in (1, 4, 5) or (base64 and version == 5):
            raise ValueError(f"no Kubernetes protocol version {version} (base64={base64})")
        self.version: Final = version
        self._b64: Final = base64
        self.name: str = _NAMES[version, base64]
        self.byte_stream: bool = False
        self._opcode: Final = Opcode.TEXT if base64 else Opcode.BINARY
        self._prefix: Final = _TEXT_PREFIX if base64 else _BINARY_PREFIX

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def _stream(self, payload: bytes) -> int:
        """The stream id of a non-empty frame."""
        if self._b64:
            return (payload[0] - 0x30) & 0xFF
        return payload[0]

    def _data(self, payload: bytes) -> bytes:
        """The payload after the stream id, base64-decoded for base64 protocols."""
        if self._b64:
            return _b64decode(payload)
        return payload[1:]

    def _frame(self, stream: int, data: bytes) -> Frame:
        if self._b64:
            return (self._opcode, self._prefix[stream] + binascii.b2a_base64(data, newline=False))
        return (self._opcode, self._prefix[stream] + data)


class KubernetesServerCodec(_KubernetesCodec):
    """We accepted the socket (a browser speaking k8s): read stdin/resize/close, write output.

    Decode: 0 → Stdin; 4 → Resize; 255 under v5 → StdinClosed when exactly ``[255, 0]``,
    else ProtocolError; 255 under v1/v4 and streams 1, 2, 3 or unknown → nothing.
    Encode: Output → its stream; Exit → stream 3: v4/v5 the upstream's own Status document
    when ``Exit.status`` is set, else ``status_json(code, message)``; v1 nothing for code 0,
    else the message text (``exit_message(code)`` when the message is empty).
    """

    __slots__ = ()

    def plain_output(self, opcode: Opcode, payload: bytes) -> tuple[int, bytes] | None:
        return None  # a browser sends no output

    def decode(self, opcode: Opcode, payload: bytes) -> Sequence[Event]:
        if not payload:
            return _NOTHING
        stream = self._stream(payload)
        if stream == STREAM_STDIN:
            data = self._data(payload)
            return (Stdin(data),) if data else _NOTHING
        if stream == STREAM_RESIZE:
            data = self._data(payload)
            return (_parse_resize(data),) if data else _NOTHING
        if stream == STREAM_CLOSE and self.version == 5:
            if len(payload) == 2 and payload[1] == STREAM_STDIN:
                return _STDIN_CLOSED
            raise ProtocolError(f"invalid v5 close frame {bytes(payload[:8])!r}: want [255, 0]")
        return _NOTHING

    def encode(self, event: Event) -> Sequence[Frame]:
        if type(event) is Output:
            data = event.data
            if not data:
                return _NOTHING
            if event.stream not in (STDOUT, STDERR):
                raise ValueError(f"output stream must be STDOUT or STDERR, not {event.stream}")
            return (self._frame(event.stream, data),)
        if type(event) is Exit:
            return self._encode_exit(event)
        return _NOTHING

    def _encode_exit(self, event: Exit) -> Sequence[Frame]:
        if self.version >= 4:
            document = event.status
            if document is None:
                document = status_json(event.code, event.message)
            return (self._frame(STREAM_ERROR, document),)
        if event.code == 0:
            return _NOTHING
        text = event.message or _failure_message(event.code)
        return (self._frame(STREAM_ERROR, text.encode("utf-8", "replace")),)


class KubernetesClientCodec(_KubernetesCodec):
    """We dialled kube-apiserver/kubelet: read output and status, write stdin/resize/close.

    Decode: 1/2 → Output (empty → nothing, e.g. the initial ``[0x01]``); 3 → Exit (v4/v5 via
    ``parse_status``, v1 via the text); 0, 4, 255 and unknown streams → nothing.
    Encode: Stdin → stream 0; Resize → stream 4 ``{"Width":W,"Height":H}``; StdinClosed →
    v5 ``[255, 0]``, v1/v4 EOT (``0x04``) on stdin, as GitLab Workhorse sends.
    """

    __slots__ = ()

    def plain_output(self, opcode: Opcode, payload: bytes) -> tuple[int, bytes] | None:
        if self._b64 or len(payload) < 2 or payload[0] not in (STREAM_STDOUT, STREAM_STDERR):
            return None
        return (payload[0], payload[1:])

    def decode(self, opcode: Opcode, payload: bytes) -> Sequence[Event]:
        if not payload:
            return _NOTHING
        stream = self._stream(payload)
        if stream in (STREAM_STDOUT, STREAM_STDERR):
            data = self._data(payload)
            return (Output(data, stream),) if data else _NOTHING
        if stream == STREAM_ERROR:
            data = self._data(payload)
            if not data:
                return _NOTHING
            if self.version >= 4:
                return (parse_status(data),)
            return (_parse_v1_error(data),)
        return _NOTHING

    def encode(self, event: Event) -> Sequence[Frame]:
        if type(event) is Stdin:
            data = event.data
            return (self._frame(STREAM_STDIN, data),) if data else _NOTHING
        if type(event) is Resize:
            size = b'{"Width":%d,"Height":%d}' % (event.width, event.height)
            return (self._frame(STREAM_RESIZE, size),)
        if type(event) is StdinClosed:
            if self.version == 5:
                return _CLOSE_STDIN_FRAME
            return (self._frame(STREAM_STDIN, _EOT),)
        return _NOTHING


_NAMES: Final = {value: name for name, value in KUBERNETES_PROTOCOLS.items()}


def kubernetes_codec(name: str, role: Role) -> KubernetesServerCodec | KubernetesClientCodec:
    """The codec for one of ``KUBERNETES_PROTOCOLS`` (KeyError for other names)."""
    version, base64 = KUBERNETES_PROTOCOLS[name]
    if role is Role.SERVER:
        return KubernetesServerCodec(version, base64=base64)
    if role is Role.CLIENT:
        return KubernetesClientCodec(version, base64=base64)
    raise ValueError(f"not a role: {role!r}")


# --- resize -----------------------------------------------------------------------------


def _lower_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: Go's encoding/json matches keys case-insensitively, last one wins."""
    return {key.lower(): value for key, value in pairs}


def _parse_resize(data: bytes) -> Resize:
    """``{"Width":W,"Height":H}`` (plus optional whitespace) → Resize, else ProtocolError."""
    try:
        document = json.loads(data, object_pairs_hook=_lower_keys)
    except (ValueError, RecursionError):
        raise ProtocolError(f"invalid resize JSON {bytes(data[:64])!r}") from None
    if not isinstance(document, dict):
        raise ProtocolError(f"resize must be a JSON object, got {bytes(data[:64])!r}")
    width = _size(document.get("width"))
    height = _size(document.get("height"))
    if width is None or height is None:
        raise ProtocolError(
            f"resize needs integer Width and Height in 0..65535: {bytes(data[:64])!r}"
        )
    return Resize(width, height)


def _size(value: object) -> int | None:
    """A uint16 JSON integer (booleans and floats are not), else None."""
    if type(value) is int and 0 <= value <= _MAX_SIZE:
        return value
    return None


# --- status -----------------------------------------------------------------------------


def exit_message(code: int) -> str:
    """The text this gateway uses for a non-zero exit when no backend message is known.

    Contains ``exit code N``, which is what ``_parse_v1_error`` looks for.
    """
    return f"command terminated with non-zero exit code: exit code {code}"


def _failure_message(code: int | None) -> str:
    return _UNKNOWN_ERROR if code is None else exit_message(code)


def _go_string(text: str) -> str:
    """``text`` as Go's ``json.Marshal`` writes a string.

    Python and Go agree on ``\\"``, ``\\\\``, ``\\b\\f\\n\\r\\t`` and lowercase ``\\u00xx`` for
    other control characters, and both leave other non-ASCII as UTF-8. Go also escapes
    ``<``, ``>``, ``&``, U+2028 and U+2029, and writes invalid UTF-8 as U+FFFD: a Python
    string's lone surrogates are the nearest equivalent.
    """
    if not text.isascii():
        text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    encoded = json.dumps(text, ensure_ascii=False)
    if "<" in encoded or ">" in encoded or "&" in encoded or not encoded.isascii():
        encoded = (
            encoded.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
    return encoded


def status_json(code: int | None, message: str) -> bytes:
    """The stream-3 document kube-apiserver/kubelet write: ``json.Marshal(metav1.Status)``.

    No ``kind``/``apiVersion``, ``metadata`` is ``{}``, empty fields are omitted, and the
    keys come in ``metav1.Status`` field order.

    * ``code == 0``: ``{"metadata":{},"status":"Success"}`` (``message`` is ignored: a
      Success status carries none).
    * ``code == N``: the kubelet's / stream translator's NonZeroExitCode Failure, with the
      cause ``{"reason":"ExitCode","message":"N"}``; N is written as Go's ``%d`` would
      (clients accept 0-255). ``message`` is the Status message, ``exit_message(N)`` when
      empty.
    * ``code is None``: the shape of ``apierrors.NewInternalError(errors.New(message))``:
      reason InternalError, one cause holding the message, code 500. The message is used
      verbatim, without NewInternalError's ``Internal error occurred:`` prefix, since it is
      usually already such a text (relayed from a v1 upstream) and the prefix would double;
      ``unknown error`` when empty.
    """
    if code == 0:
        return _SUCCESS
    if code is None:
        text = _go_string(message or _UNKNOWN_ERROR)
        document = (
            f'{{"metadata":{{}},"status":"Failure","message":{text},"reason":"InternalError",'
            f'"details":{{"causes":[{{"message":{text}}}]}},"code":500}}'
        )
    else:
        text = _go_string(message or exit_message(code))
        document = (
            f'{{"metadata":{{}},"status":"Failure","message":{text},"reason":"NonZeroExitCode",'
            f'"details":{{"causes":[{{"reason":"ExitCode","message":"{code:d}"}}]}}}}'
        )
    return document.encode("utf-8")


def _string(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    return value if isinstance(value, str) else ""


def _parse_uint8(text: str) -> int | None:
    """Go's ``strconv.ParseUint(text, 10, 8)``: ASCII digits only, value 0..255."""
    if not text or len(text) > 8 or not _DIGITS.issuperset(text):
        return None
    value = int(text)
    return value if value <= 0xFF else None


def parse_status(payload: bytes) -> Exit:
    """A v4/v5 stream-3 document → Exit, as client-go's ``errorDecoderV4`` reads it.

    * ``status: Success`` → code 0.
    * ``Failure`` + reason ``NonZeroExitCode`` + a cause ``{"reason":"ExitCode","message":N}``
      with N a ParseUint(…, 10, 8) number (0-255) → code N, message the Status message
      (``exit_message(N)`` when empty). No details, no ExitCode cause, or a bad N (e.g.
      ``"256"``) → code None with client-go's ``error stream protocol error: …`` text.
    * any other Failure → code None, the Status message (else its reason, else
      ``unknown error``); a ``status`` that is neither → code None, client-go's
      ``error stream protocol error: unknown error``.

    ``Exit.status`` keeps the payload byte for byte whenever it is a JSON object, so a k8s
    browser receives exactly what the upstream sent. Anything that is not a JSON object
    gives code None with the text as message and no ``status`` (a browser then gets a
    well-formed ``status_json`` document instead). Keys match case-insensitively, as in Go;
    fields not read here are not type-checked.
    """
    raw = bytes(payload)
    text = raw.decode("utf-8", "replace")
    try:
        document = json.loads(text, object_pairs_hook=_lower_keys)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        return Exit(None, text if text.strip() else f"error stream protocol error: {text!r}")
    status = _string(document, "status")
    message = _string(document, "message")
    if status == "Success":
        return Exit(0, "", raw)
    if status != "Failure":
        return Exit(None, "error stream protocol error: unknown error", raw)
    reason = _string(document, "reason")
    if reason != "NonZeroExitCode":
        return Exit(None, message or reason or _UNKNOWN_ERROR, raw)
    details = document.get("details")
    if not isinstance(details, dict):
        return Exit(None, "error stream protocol error: details must be set", raw)
    causes = details.get("causes")
    for cause in causes if isinstance(causes, list) else ():
        if not isinstance(cause, dict) or _string(cause, "reason") != "ExitCode":
            continue
        value = _string(cause, "message")
        code = _parse_uint8(value)
        if code is None:
            quoted = json.dumps(value, ensure_ascii=False)  # Go's %q, near enough
            return Exit(None, f"error stream protocol error: invalid exit code value {quoted}", raw)
        return Exit(code, message or exit_message(code), raw)
    return Exit(None, "error stream protocol error: no ExitCode cause given", raw)


def _parse_v1_error(data: bytes) -> Exit:
    """A v1 stream-3 text (always a failure) → Exit(N if it says ``exit code N``, text).

    N is taken after the last ``exit code `` and must be 1-255 (v1 servers write stream 3
    only on failure, so 0 is not an exit status here); otherwise the code is None.
    """
    text = bytes(data).decode("utf-8", "replace")
    code: int | None = None
    start = text.rfind("exit code ")
    if start >= 0:
        start += len("exit code ")
        end = start
        while end < len(text) and text[end] in _DIGITS:
            end += 1
        value = _parse_uint8(text[start:end])
        if value:
            code = value
    return Exit(code, text)
