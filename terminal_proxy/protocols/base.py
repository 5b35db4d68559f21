"""The codec interface: pure translation between WebSocket frames and events.

A codec does no I/O. ``decode`` takes one received data frame and returns the events it
carries; ``encode`` takes one event and returns the frames to send (possibly none, when the
protocol cannot express it). A codec instance belongs to one side of one session; codecs
keep no state across frames except where the protocol needs it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from .events import Event

__all__ = ["Codec", "Frame", "Opcode", "ProtocolError", "Role"]


class Opcode(enum.IntEnum):
    """WebSocket data frame opcodes (RFC 6455 §5.2)."""

    TEXT = 0x1
    BINARY = 0x2


# One data frame on the wire: opcode and payload (TEXT payloads are ASCII/UTF-8 bytes).
Frame = tuple[Opcode, bytes]


class Role(enum.Enum):
    """Which end of the WebSocket the codec speaks for.

    SERVER: we accepted the connection (the browser side): we decode what a client sends
    (stdin, resize, close signal) and encode what a server sends (output, status).
    CLIENT: we dialled (the upstream side): the reverse.
    """

    SERVER = "server"
    CLIENT = "client"


class ProtocolError(ValueError):
    """A peer sent a frame its negotiated subprotocol does not allow."""


class Codec(Protocol):
    """Translation for one negotiated subprotocol, seen from one role."""

    # The negotiated subprotocol name ("" for none).
    name: str
    # True when frames are an undifferentiated byte stream (no channels, no control):
    # terminal.gitlab.com and friends. Exit status cannot travel in-band there.
    byte_stream: bool

    def decode(self, opcode: Opcode, payload: bytes) -> Sequence[Event]:
        """Turn one received data frame into events; raise ProtocolError if malformed."""
        ...

    def encode(self, event: Event) -> Sequence[Frame]:
        """Turn one event into the frames to send (empty when not expressible)."""
        ...

    def plain_output(self, opcode: Opcode, payload: bytes) -> tuple[int, bytes] | None:
        """The hot path's shortcut: ``(stream, data)`` when ``decode`` would return exactly
        ``(Output(data, stream),)``, else None (then call ``decode``). Never raises."""
        ...
