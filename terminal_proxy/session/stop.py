"""Why a session ended, and the close codes each reason sends both ways.

The one table of close codes: ``docs/close-codes.md`` documents it and
``tests/test_gateway_extras.py`` checks both agree. Metrics, audit and resume import only
this module of the session package.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CLOSE_CODES",
    "LINGER",
    "Stop",
    "StopReason",
    "ended",
    "no_stop",
    "reason_bytes",
    "truncate",
]


class StopReason(enum.Enum):
    """Why a session ended. Values: the ``stop`` field of logs, audit and metrics."""

    EXITED = "exited"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_FAILED = "upstream_failed"
    BROWSER_LEFT = "browser_left"
    BROWSER_PROTOCOL_ERROR = "browser_protocol_error"
    MESSAGE_TOO_BIG = "message_too_big"
    REVOKED = "revoked"
    CHANGED = "changed"
    AUTH_UNAVAILABLE = "auth_unavailable"
    TIME_LIMIT = "time_limit"
    IDLE = "idle"
    SHUTDOWN = "shutdown"
    INTERNAL = "internal_error"
    # v1.terminal-proxy resume (docs/browser-protocol.md). Only resume_expired ends a
    # session; the others close one browser socket and the session lives on.
    TAKEN_OVER = "taken_over"
    RESUME_EXPIRED = "resume_expired"
    RESUME_UNKNOWN = "resume_unknown"
    RESUME_BAD_TOKEN = "resume_bad_token"  # noqa: S105 (a stop reason)
    RESUME_FORBIDDEN = "resume_forbidden"
    RECORDING_FAILED = "recording_failed"
    # Shared terminals (docs/sharing.md): end one participant's socket, not the session.
    REMOVED = "removed"
    SHARING_ENDED = "sharing_ended"
    JOIN_BAD_TOKEN = "join_bad_token"  # noqa: S105 (a stop reason)


# reason → (browser code, browser reason, upstream code).
CLOSE_CODES: dict[StopReason, tuple[int, str, int]] = {
    StopReason.EXITED: (1000, "exit code {exit_code}", 1000),
    StopReason.UPSTREAM_CLOSED: (1000, "session ended", 1000),
    StopReason.UPSTREAM_FAILED: (1014, "upstream failed: {detail}", 1000),
    StopReason.BROWSER_LEFT: (1000, "", 1000),
    StopReason.BROWSER_PROTOCOL_ERROR: (1002, "protocol error: {detail}", 1000),
    StopReason.MESSAGE_TOO_BIG: (1009, "message too big", 1000),
    StopReason.REVOKED: (4001, "authorization revoked", 1000),
    StopReason.CHANGED: (4002, "connection details changed", 1000),
    StopReason.AUTH_UNAVAILABLE: (4003, "authorization unavailable", 1000),
    StopReason.TIME_LIMIT: (4004, "session time limit reached", 1000),
    StopReason.IDLE: (4005, "idle timeout", 1000),
    StopReason.SHUTDOWN: (1001, "server shutting down", 1001),
    StopReason.INTERNAL: (1011, "internal error", 1011),
    StopReason.TAKEN_OVER: (4006, "session resumed on another connection", 1000),
    StopReason.RESUME_EXPIRED: (4007, "session ended: resume grace expired", 1000),
    StopReason.RESUME_UNKNOWN: (4008, "no such session to resume", 1000),
    StopReason.RESUME_BAD_TOKEN: (4009, "resume refused: invalid token", 1000),
    StopReason.REMOVED: (4012, "removed by the owner", 1000),
    StopReason.SHARING_ENDED: (4013, "sharing ended by the owner", 1000),
    StopReason.JOIN_BAD_TOKEN: (4009, "join refused: invalid token", 1000),
    StopReason.RESUME_FORBIDDEN: (4010, "resume refused: {detail}", 1000),
    StopReason.RECORDING_FAILED: (4011, "recording failed", 1000),
}
# The upstream's end that a detached session waits out (within the resume grace) so a
# returning browser still gets the last output and the exit status.
LINGER = frozenset({StopReason.EXITED, StopReason.UPSTREAM_CLOSED, StopReason.UPSTREAM_FAILED})


@dataclass(frozen=True, slots=True)
class Stop:
    """The first stopper's verdict; ``detail`` is for logs and some close reasons."""

    reason: StopReason
    detail: str = ""
    exit_code: int | None = None
    # Said to the browser after the code's text ("authorization revoked: <public>"):
    # the reason an operator or the web app gave with a pushed revocation.
    public: str = ""

    @property
    def browser_code(self) -> int:
        return CLOSE_CODES[self.reason][0]

    @property
    def upstream_code(self) -> int:
        return CLOSE_CODES[self.reason][2]

    @property
    def browser_reason(self) -> str:
        template = CLOSE_CODES[self.reason][1]
        text = template.format(exit_code=self.exit_code, detail=self.detail or "closed")
        if self.public:
            text = f"{text}: {self.public}"
        return truncate(text, 123)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (a close reason's room is 123)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


def reason_bytes(text: str) -> bytes:
    return truncate(text, 123).encode()


# What a session's parts call instead of the session once it has ended. A part holds the
# session's bound methods (request_stop, stopping…), which are references back to the
# session: swapping them for these when the session ends leaves no cycle, so an ended
# session is freed by reference counting rather than by the collector.


def no_stop(stop: Stop) -> None:
    """A stop request after the end: nothing left to stop."""


def ended() -> bool:
    """``stopping()`` after the end."""
    return True
