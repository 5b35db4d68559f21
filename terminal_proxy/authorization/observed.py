"""The authorizer sessions re-poll with, observed: each re-poll's outcome is counted."""

from __future__ import annotations

from ..errors import AuthorizationError
from ..metrics import Metrics
from . import Authorizer, BrowserRequest, Extension, Grant, PassBack, extend_by, offer_of

__all__ = ["ObservedAuthorizer"]


class ObservedAuthorizer:
    """Wraps the authorizer sessions re-poll with, counting each re-poll's outcome.

    The outcome is judged as ``Session`` judges it: an equal grant is ``unchanged``, an
    unequal one ``changed``, a non-5xx refusal ``revoked``, errors and 5xx ``failed``.
    """

    def __init__(self, inner: Authorizer, metrics: Metrics) -> None:
        self.inner = inner
        self._counter = metrics.reauthorizations

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        return await self.inner.authorize(request)

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        try:
            answer = await self.inner.reauthorize(request, grant)
        except AuthorizationError:
            self._counter.labels("failed").inc()
            raise
        if isinstance(answer, PassBack):
            self._counter.labels("failed" if answer.status >= 500 else "revoked").inc()
        else:
            self._counter.labels("unchanged" if answer == grant else "changed").inc()
        return answer

    def extension_offer(self, request: BrowserRequest) -> float | None:
        return offer_of(self.inner, request)

    async def extend(self, request: BrowserRequest, grant: Grant) -> Extension:
        return await extend_by(self.inner, request, grant)

    async def aclose(self) -> None:
        await self.inner.aclose()
