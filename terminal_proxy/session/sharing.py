"""A shared session: its participants, invitations and terminal model (docs/sharing.md).

``Sharing`` exists from the owner's first invitation or the first join on. It is one
more link of the session's ``LinkSet``: the output it is given goes into the terminal
model (so a joiner, or a participant that fell behind, gets the screen as the owner sees
it) and into each participant's own bounded queue, without waiting for any of them.
Roles: the owner (the session's own browser), writers (their input reaches the upstream)
and viewers (their input is refused here, never sent on). Only the owner manages the
sharing: invitations, roles, removals, the end of sharing and who sets the size.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..protocols import (
    Event,
    Exit,
    ExpiryWarning,
    ExtensionRequest,
    Resize,
    ShareRequest,
    SharingNotice,
    Stdin,
    StdinClosed,
)
from ..tasks import cancel_and_wait, spawn
from .invitations import Invitations
from .participants import Participant
from .stop import Stop, StopReason

if TYPE_CHECKING:
    from ..screen import ScreenModel

__all__ = ["OWNER", "Sharing"]

log = logging.getLogger("terminal_proxy.session")

# The owner's participant id in the participants list.
OWNER = "owner"

Audit = Callable[[str, dict[str, object]], None]


class Sharing:
    """The participants of one session and what they share."""

    def __init__(
        self,
        *,
        session_id: str,
        owner_user: str,
        model: ScreenModel,
        offset: int,
        max_participants: int,
        buffer: int,
        close_timeout: float,
        grace: float,
        to_owner: Callable[[Event], Awaitable[bool]],
        to_upstream: Callable[[Event], Awaitable[bool]],
        audit: Audit,
        counted: Callable[[int], None],
    ) -> None:
        self.session_id = session_id
        self.owner_user = owner_user
        self.model = model
        # Output offset of the next byte (the owner's numbering).
        self.offset = offset
        self.max_participants = max_participants
        self._buffer = buffer
        self._close_timeout = close_timeout
        # How long a participant whose socket dropped waits for its resume (0: none).
        self.grace = grace
        self._to_owner = to_owner
        self._to_upstream = to_upstream
        self._audit = audit
        self._counted = counted
        self.participants: dict[str, Participant] = {}
        self.invitations = Invitations()
        # The writer whose resizes set the terminal's size (None: the owner).
        self.controller: str | None = None
        self.since = time.time()
        # Who took part, when, as what: the recording's metadata lists it.
        self.history: list[dict[str, object]] = []
        # Notices on their way to the owner (sent from synchronous code).
        self._pending: set[asyncio.Task[bool]] = set()

    # The session's output (LinkSet) ---------------------------------------------------

    async def send_output(self, data: bytes, stream: int) -> bool:
        self.model.feed(data)
        self.offset += len(data)
        for participant in self.participants.values():
            participant.push_output(data)
        return True

    async def send_event(self, event: Event) -> bool:
        if type(event) in (Exit, ExpiryWarning):
            for participant in self.participants.values():
                participant.push_event(event)
        return True

    def begin_end(self) -> None:
        pass

    async def close(self, stop: Stop) -> None:
        """The session ends: every participant's socket closes with its code."""
        await cancel_and_wait(list(self._pending))
        await asyncio.gather(*(p.close(stop) for p in list(self.participants.values())))

    def finish(self) -> None:
        for participant in list(self.participants.values()):
            self._drop(participant, "session ended")

    # Joins ------------------------------------------------------------------------------

    def new_participant_id(self) -> str:
        return f"p-{secrets.token_hex(6)}"

    def full(self) -> bool:
        return len(self.participants) >= self.max_participants

    def join(self, participant: Participant, how: str) -> None:
        """Admit ``participant``: its hello is the caller's, then it starts from a
        snapshot."""
        self.participants[participant.id] = participant
        self.history.append(participant.describe() | {"joined": round(time.time(), 3)})
        participant.start(self)
        self._counted(1)
        self._audit("share_join", self._fields(participant) | {"via": how})
        self._announce()

    def leave(self, participant: Participant, why: str) -> None:
        if self.participants.get(participant.id) is participant:
            self._drop(participant, why)
            self._announce()

    def _drop(self, participant: Participant, why: str) -> None:
        del self.participants[participant.id]
        for entry in self.history:
            if entry["participant"] == participant.id and "left" not in entry:
                entry.update(left=round(time.time(), 3), role=participant.role)
        if self.controller == participant.id:
            self.controller = None
        self._counted(-1)
        self._audit("share_leave", self._fields(participant) | {"reason": why})

    def catch_up(self, participant: Participant) -> list[Event]:
        """A snapshot of the screen, then the size and the participants."""
        model = self.model
        screen = SharingNotice(
            "screen",
            (
                ("cols", model.cols),
                ("rows", model.rows),
                ("data", model.snapshot()),
                ("offset", self.offset),
            ),
        )
        return [screen, self._size_notice(), self.participants_notice()]

    def participants_notice(self) -> SharingNotice:
        owner: dict[str, object] = {"participant": OWNER, "user": self.owner_user}
        items = [owner | {"role": "owner", "since": round(self.since, 3)}]
        items += [p.describe() for p in self.participants.values()]
        return SharingNotice("participants", (("items", items),))

    def _size_notice(self) -> SharingNotice:
        return SharingNotice("size", (("cols", self.model.cols), ("rows", self.model.rows)))

    def _announce(self) -> None:
        """Everyone gets the participants list (the owner through its own link)."""
        notice = self.participants_notice()
        for participant in self.participants.values():
            participant.push_event(notice)
        self._owner_later(notice)

    def _owner_later(self, event: Event) -> None:
        task = spawn(self._notify_owner(event), name=f"session-{self.session_id}-sharing-notice")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _notify_owner(self, event: Event) -> bool:
        return await self._to_owner(event)

    # Size ------------------------------------------------------------------------------

    def owner_resized(self, cols: int, rows: int) -> bool:
        """The owner's resize; False when a writer controls the size (not sent on)."""
        if self.controller is not None:
            return False
        self._resized(cols, rows)
        return True

    def _resized(self, cols: int, rows: int) -> None:
        if (cols, rows) == (self.model.cols, self.model.rows) or not (cols and rows):
            return
        self.model.resize(cols, rows)
        notice = self._size_notice()
        for participant in self.participants.values():
            participant.push_event(notice)

    # A participant's messages -----------------------------------------------------------

    async def from_participant(self, participant: Participant, event: Event) -> None:
        kind = type(event)
        if kind is Stdin:
            if participant.role == "writer":
                await self._to_upstream(event)
            else:
                participant.refused("input", "read-only: you joined as a viewer")
        elif kind is Resize:
            assert isinstance(event, Resize)
            if participant.id == self.controller:
                self._resized(event.width, event.height)
                await self._to_upstream(event)
                await self._to_owner(self._size_notice())
            elif participant.role == "viewer":
                participant.refused("resize", "the owner sets the terminal's size")
        elif kind is ShareRequest:
            assert isinstance(event, ShareRequest)
            participant.refused(event.request, "only the owner manages sharing")
        elif kind is ExtensionRequest:
            participant.refused("extend", "only the owner can extend the session")
        elif kind is StdinClosed:
            participant.refused("eof", "only the owner can end the input")

    # The owner's requests ---------------------------------------------------------------

    async def from_owner(self, request: ShareRequest) -> None:
        """Carry out one of the owner's sharing requests; answers go to the owner."""
        now = time.monotonic()
        kind = request.request
        if kind == "invite":
            assert request.role is not None
            made = self.invitations.create(request.role, request.expires_in, request.uses or 0, now)
            if made is None:
                await self._refuse(kind, "this session has too many open invitations")
                return
            invitation, token = made
            fields = invitation.describe(now) | {"token": token}
            self._audit(
                "invitation_created",
                {"session": self.session_id} | invitation.describe(now),
            )
            await self._to_owner(SharingNotice("invitation", tuple(fields.items())))
        elif kind == "invitations":
            await self._to_owner(self._invitations_notice(now))
        elif kind == "revoke":
            assert request.invitation is not None
            if self.invitations.revoke(request.invitation):
                self._audit(
                    "invitation_revoked",
                    {"session": self.session_id, "invitation": request.invitation},
                )
            await self._to_owner(self._invitations_notice(now))
        elif kind in ("set_role", "remove", "size_control") and request.participant is not None:
            participant = self.participants.get(request.participant)
            if participant is None:
                await self._refuse(kind, f"no participant {request.participant}")
                return
            await self._manage(kind, participant, request.role)
        elif kind == "size_control":
            self.controller = None
        elif kind == "end_sharing":
            for revoked in self.invitations.revoke_all():
                self._audit(
                    "invitation_revoked", {"session": self.session_id, "invitation": revoked}
                )
            stop = Stop(StopReason.SHARING_ENDED)
            await asyncio.gather(*(p.close(stop) for p in list(self.participants.values())))

    async def _manage(self, kind: str, participant: Participant, role: str | None) -> None:
        if kind == "set_role":
            assert role is not None
            if role == participant.role:
                return
            before, participant.role = participant.role, role
            if role == "viewer" and self.controller == participant.id:
                self.controller = None
            self._audit("share_role", self._fields(participant) | {"before": before, "role": role})
            participant.push_event(SharingNotice("role", (("role", role),)))
            self._announce()
        elif kind == "remove":
            self._audit("share_remove", self._fields(participant))
            await participant.close(Stop(StopReason.REMOVED))
        elif participant.role != "writer":
            await self._refuse(kind, "only a writer can set the terminal's size")
        else:
            self.controller = participant.id

    async def _refuse(self, request: str, reason: str) -> None:
        await self._to_owner(SharingNotice("refused", (("request", request), ("reason", reason))))

    def _invitations_notice(self, now: float) -> SharingNotice:
        return SharingNotice("invitations", (("items", self.invitations.items(now)),))

    def _fields(self, participant: Participant) -> dict[str, object]:
        return {
            "session": self.session_id,
            "participant": participant.id,
            "user": participant.user,
            "role": participant.role,
        }
