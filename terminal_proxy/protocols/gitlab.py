"""GitLab terminal codecs: ``terminal.gitlab.com`` and ``base64.terminal.gitlab.com``.

A byte stream with no channels and no control messages (GitLab Workhorse's
``gitlabWrapper``): ``terminal.gitlab.com`` sends the raw bytes in BINARY frames,
``base64.terminal.gitlab.com`` sends standard padded base64 in TEXT frames. Decoding accepts
either opcode. Because nothing but data fits in the stream, resize and exit status cannot be
expressed: the exit status travels as the WebSocket close reason, which the relay handles.

* SERVER (browser): decode → Stdin; encode Output (stdout and stderr alike, merged) → one
  frame; everything else → nothing.
* CLIENT (runner session server): decode → Output on STDOUT; encode Stdin → one frame,
  StdinClosed → the EOT byte ``0x04`` as data (what Workhorse sends when a session ends);
  everything else → nothing.

Empty frames carry nothing; an empty Stdin or Output makes no frame.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Final

from .base import Frame, Opcode, ProtocolError, Role
from .events import STDOUT, Event, Output, Stdin, StdinClosed

__all__ = ["BASE64_TERMINAL", "GITLAB_PROTOCOLS", "TERMINAL", "GitLabCodec", "gitlab_codec"]

TERMINAL: Final = "terminal.gitlab.com"
BASE64_TERMINAL: Final = "base64.terminal.gitlab.com"

# name -> base64
GITLAB_PROTOCOLS: Final[dict[str, bool]] = {TERMINAL: False, BASE64_TERMINAL: True}

_NOTHING: Final[tuple[()]] = ()
_EOT: Final = b"\x04"


class GitLabCodec:
    """One GitLab terminal protocol seen from one role (see the module docstring)."""

    __slots__ = ("_b64", "_client", "_eot", "_opcode", "byte_stream", "name", "role")

    def __init__(self, role: Role, *, base64: bool = False) -> None:
        if not isinstance(role, Role):
            raise ValueError(f"not a role: {role!r}")
        self.name: str = BASE64_TERMINAL if base64 else TERMINAL
        self.byte_stream: bool = True
        self.role: Final = role
        self._b64: Final = base64
        self._client: Final = role is Role.CLIENT
        self._opcode: Final = Opcode.TEXT if base64 else Opcode.BINARY
        self._eot: Final[tuple[Frame, ...]] = (self._frame(_EOT),)

    def __repr__(self) -> str:
        return f"GitLabCodec({self.role}, {self.name!r})"

    def _frame(self, data: bytes) -> Frame:
        if self._b64:
            return (self._opcode, binascii.b2a_base64(data, newline=False))
        return (self._opcode, data)

    def decode(self, opcode: Opcode, payload: bytes) -> Sequence[Event]:
        if self._b64:
            try:
                # What base64.b64decode(payload, validate=True) runs on Python 3.11+.
                data = binascii.a2b_base64(payload, strict_mode=True)
            except binascii.Error as exc:
                raise ProtocolError(f"invalid base64 in frame: {exc}") from None
        else:
            data = payload
        if not data:
            return _NOTHING
        if self._client:
            return (Output(data),)
        return (Stdin(data),)

    def plain_output(self, opcode: Opcode, payload: bytes) -> tuple[int, bytes] | None:
        if self._client and not self._b64 and payload:
            return (STDOUT, payload)
        return None

    def encode(self, event: Event) -> Sequence[Frame]:
        if self._client:
            if type(event) is Stdin:
                return (self._frame(event.data),) if event.data else _NOTHING
            if type(event) is StdinClosed:
                return self._eot
        elif type(event) is Output:
            return (self._frame(event.data),) if event.data else _NOTHING
        return _NOTHING


def gitlab_codec(name: str, role: Role) -> GitLabCodec:
    """The codec for one of ``GITLAB_PROTOCOLS`` (KeyError for other names)."""
    return GitLabCodec(role, base64=GITLAB_PROTOCOLS[name])
