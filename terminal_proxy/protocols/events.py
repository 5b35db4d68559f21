"""Neutral terminal events: what every codec decodes into and encodes from.

A session never looks at wire frames: the browser's codec turns its frames into these
events and the upstream's codec turns them back into frames, and the other way round.
Every event is an immutable value, so tables of (frame, events) pairs test each codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "STDERR",
    "STDOUT",
    "Ack",
    "Event",
    "Exit",
    "ExpiryWarning",
    "ExtensionAnswer",
    "ExtensionRequest",
    "Hello",
    "JoinToken",
    "Output",
    "Resize",
    "Resume",
    "ShareRequest",
    "SharingNotice",
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


# Session control: only v1.terminal-proxy expresses these; every other codec encodes
# them to nothing and never decodes them.


@dataclass(frozen=True, slots=True)
class Hello:
    """Gateway → browser, first message of every attachment (new or resumed).

    ``token`` is the single-use resume token for the *next* resume. ``offset`` is the
    output offset the bytes that follow start at (0 for a new session; on a resume the
    client's offset, or a later one when ``reset`` says bytes were lost); ``input`` is
    how many input bytes the upstream has been given (the client re-sends from there).
    ``expires_in`` is the seconds left when the session has a time limit;
    ``resume_grace`` how long the session waits for a resume once its browser is gone.
    """

    session: str
    token: str = field(repr=False)
    offset: int = 0
    input: int = 0
    resumed: bool = False
    reset: bool = False
    expires_in: float | None = None
    resume_grace: float | None = None
    # Shared terminals (docs/sharing.md): this socket's role and participant id.
    role: str | None = None
    participant: str | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    """Browser → gateway, first message of a resuming socket."""

    session: str
    token: str = field(repr=False)
    received: int
    sent: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledgement: ``received`` output bytes (browser → gateway) or ``input`` bytes
    given to the upstream (gateway → browser)."""

    received: int | None = None
    input: int | None = None


@dataclass(frozen=True, slots=True)
class ExpiryWarning:
    """The session's time limit ends in ``expires_in`` seconds."""

    expires_in: float
    extendable: bool = False


@dataclass(frozen=True, slots=True)
class ExtensionRequest:
    """The user asks for more time."""


@dataclass(frozen=True, slots=True)
class ExtensionAnswer:
    """The gateway's answer to an ExtensionRequest."""

    granted: bool
    expires_in: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class JoinToken:
    """Browser → gateway, first message of a join through an invitation."""

    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ShareRequest:
    """Browser → gateway: one of the owner's sharing requests (docs/sharing.md).

    ``request`` is the message type (invite, invitations, revoke, set_role, remove,
    end_sharing, size_control); the other fields are those the type carries."""

    request: str
    role: str | None = None
    expires_in: float | None = None
    uses: int | None = None
    invitation: str | None = None
    participant: str | None = None


@dataclass(frozen=True, slots=True)
class SharingNotice:
    """Gateway → browser: a sharing message (screen, participants, size, role, refused,
    invitation, invitations): ``fields`` become the JSON object beside ``type``."""

    type: str
    fields: tuple[tuple[str, object], ...] = ()


Event = (
    Stdin
    | Output
    | Resize
    | StdinClosed
    | Exit
    | Hello
    | Resume
    | Ack
    | ExpiryWarning
    | ExtensionRequest
    | ExtensionAnswer
    | JoinToken
    | ShareRequest
    | SharingNotice
)
