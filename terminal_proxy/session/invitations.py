"""A shared session's invitations: join links the owner made (docs/sharing.md).

An invitation has an id (not secret: it is in the join request's query) and a token of
256 random bits that only its link carries, in the page URL's fragment, so it never
reaches a server log; the gateway keeps the token's SHA-256 only, and the joiner proves
it in its first message. Pure bookkeeping: no I/O, the clock is passed in.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["MAX_INVITATION_S", "Invitation", "InvitationState", "Invitations"]

# Longest an invitation lives, seconds, whatever the owner asks.
MAX_INVITATION_S = 24 * 3600.0
# Default lifetime when the owner does not say.
DEFAULT_INVITATION_S = 3600.0
# Open invitations one session may have.
MAX_INVITATIONS = 32


class InvitationState(enum.Enum):
    OPEN = "open"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED_UP = "used_up"


@dataclass(slots=True)
class Invitation:
    id: str
    role: str
    expires_at: float
    # 1: single use; 0: any number of joins until it expires.
    uses: int
    digest: bytes
    used: int = 0

    def describe(self, now: float) -> dict[str, object]:
        return {
            "invitation": self.id,
            "role": self.role,
            "expires_in": round(max(0.0, self.expires_at - now), 3),
            "uses": self.uses,
            "used": self.used,
        }


class Invitations:
    """The invitations of one session, until they expire (used-up ones are kept to
    answer a late join precisely: 410, not 404)."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[str, Invitation] = {}

    def create(
        self, role: str, expires_in: float | None, uses: int, now: float
    ) -> tuple[Invitation, str] | None:
        """A new invitation and its token; None when the session has too many open."""
        self._expire(now)
        if len(self.items(now)) >= MAX_INVITATIONS:
            return None
        lifetime = min(expires_in or DEFAULT_INVITATION_S, MAX_INVITATION_S)
        token = secrets.token_urlsafe(32)
        invitation = Invitation(
            id=f"i-{secrets.token_hex(6)}",
            role=role,
            expires_at=now + lifetime,
            uses=uses,
            digest=_digest(token),
        )
        self._open[invitation.id] = invitation
        return invitation, token

    def state(self, invitation_id: str, now: float) -> InvitationState:
        invitation = self._open.get(invitation_id)
        if invitation is None:
            return InvitationState.UNKNOWN
        if invitation.expires_at <= now:
            return InvitationState.EXPIRED
        if invitation.uses and invitation.used >= invitation.uses:
            return InvitationState.USED_UP
        return InvitationState.OPEN

    def role(self, invitation_id: str) -> str | None:
        invitation = self._open.get(invitation_id)
        return None if invitation is None else invitation.role

    def use(self, invitation_id: str, token: str, now: float) -> Invitation | None:
        """Count one join through the invitation when ``token`` is its token and it is
        still open; None otherwise."""
        invitation = self._open.get(invitation_id)
        if invitation is None or self.state(invitation_id, now) is not InvitationState.OPEN:
            return None
        if not hmac.compare_digest(invitation.digest, _digest(token)):
            return None
        invitation.used += 1
        return invitation

    def revoke(self, invitation_id: str) -> bool:
        return self._open.pop(invitation_id, None) is not None

    def revoke_all(self) -> list[str]:
        revoked = list(self._open)
        self._open.clear()
        return revoked

    def items(self, now: float) -> list[dict[str, object]]:
        self._expire(now)
        return [
            invitation.describe(now)
            for invitation in self._open.values()
            if self.state(invitation.id, now) is InvitationState.OPEN
        ]

    def _expire(self, now: float) -> None:
        for key in [k for k, i in self._open.items() if i.expires_at <= now]:
            del self._open[key]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
