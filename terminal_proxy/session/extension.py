"""Answers to a session's extension requests (v1.terminal-proxy ``extend``).

Re-authorization decides; an authorizer that owns the time limit (``Extender``, e.g.
provisioned terminals) also extends it where it lives. One request is decided at a time
and one arriving meanwhile is refused at once, so however many arrive together, at most
``max_extensions`` are ever granted and none piles up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..authorization import (
    Authorizer,
    BrowserRequest,
    Extension,
    Grant,
    PassBack,
    extend_by,
    offer_of,
)
from ..errors import AuthorizationError
from ..protocols import ExtensionAnswer
from .timers import Deadline

__all__ = ["ExtensionDesk"]


class ExtensionDesk:
    """One session's extensions: ``extension`` seconds each, at most ``max_extensions``
    (unless the authorizer makes the offer)."""

    def __init__(
        self,
        authorizer: Authorizer,
        request: BrowserRequest,
        grant: Grant,
        *,
        extension: float,
        max_extensions: int,
    ) -> None:
        self._authorizer = authorizer
        self._request = request
        self._grant = grant
        self._extension = extension
        self._max_extensions = max_extensions
        self._lock = asyncio.Lock()

    def extendable(self, deadline: Deadline) -> bool:
        # Asked when needed (a warning, a request), not per session set-up.
        offer = offer_of(self._authorizer, self._request)
        if offer is not None:
            return offer > 0 and not deadline.capped
        return self._extension > 0 and deadline.extensions < self._max_extensions

    async def answer(
        self, deadline: Deadline | None, stopping: Callable[[], bool]
    ) -> tuple[ExtensionAnswer, float]:
        """The answer to one request, and the seconds it added (0 when refused)."""
        if deadline is None:
            return ExtensionAnswer(False, reason="this session has no time limit"), 0.0
        if self._lock.locked():
            # One arriving while another is decided is refused at once, never queued.
            busy = "an extension request is already being decided"
            return ExtensionAnswer(False, deadline.remaining(), busy), 0.0
        async with self._lock:
            # At the authorizer's ceiling, the authorizer still answers (with its reason).
            if not self.extendable(deadline) and not deadline.capped:
                return ExtensionAnswer(False, deadline.remaining(), "no extension available"), 0.0
            try:
                extension = await self._authorized(deadline)
            except AuthorizationError:
                return ExtensionAnswer(
                    False, deadline.remaining(), "authorization unavailable"
                ), 0.0
            if extension.expires_in is None:
                return ExtensionAnswer(False, deadline.remaining(), extension.reason), 0.0
            if stopping():
                return ExtensionAnswer(False, reason="session ending"), 0.0
            added = deadline.extend(extension.expires_in, last=extension.last)
            return ExtensionAnswer(True, deadline.remaining()), added

    async def _authorized(self, deadline: Deadline) -> Extension:
        if offer_of(self._authorizer, self._request) is not None:
            return await extend_by(self._authorizer, self._request, self._grant)
        answer = await self._authorizer.reauthorize(self._request, self._grant)
        if isinstance(answer, PassBack) or answer != self._grant:
            return Extension(None, "authorization does not allow it")
        return Extension(deadline.remaining() + self._extension)
