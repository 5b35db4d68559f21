"""Neutral terminal events: what every codec decodes into and encodes from.

A session never looks at wire frames: the browser's codec turns its frames into these
events and the upstream's codec turns them back into frames, and the other way round.
Every event is an immutable value, so tables of (frame, events) pairs test each codec.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "STDERR",
    "STDOUT",
    "Event",
    "Exit",
    "Output",
    "Resize",
    "Stdin",
    "StdinClosed",
]

STDOUT = 1
STDERR = 2


@dataclass(frozen=True, slots=True)
class Stdin:
    """Bytes typed by the user, for the process's standard input."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes the process wrote; ``stream`` is STDOUT or STDERR."""

    data: bytes
    stream: int = STDOUT


@dataclass(frozen=True, slots=True)
class Resize:
    """The terminal's new size in character cells."""

    width: int
    height: int


@dataclass(frozen=True, slots=True)
class StdinClosed:
    """The user's side has no more input (half-close; v5 close signal or EOT)."""


@dataclass(frozen=True, slots=True)
class Exit:
    """The process ended.

    ``code`` is the exit status when the backend told it (0 for success), or None when the
    backend reported a failure without one. ``message`` is human-readable and never empty
    for failures. ``status`` keeps the backend's raw status document (Kubernetes
    ``metav1.Status`` JSON), so a Kubernetes browser can get it byte for byte.
    """

    code: int | None
    message: str = ""
    status: bytes | None = None


Event = Stdin | Output | Resize | StdinClosed | Exit
