"""Per-route authorizers: each request goes to the authorizer of its route's kind.

Routes of ``kind: authorization`` (every default route) go to the configured authorization
API; ``kind: kubernetes``, ``kind: kubernetes-provision`` and ``kind: kubernetes-node-debug``
to the gateway's Kubernetes authorizers, built by ``build.with_kubernetes`` (this module
never imports an implementation). The route is found the way the gateway finds it (first
pattern that matches the path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ..config import Config, RouteConfig
from . import (
    Authorizer,
    BrowserRequest,
    Extension,
    Grant,
    JoinAuthorizer,
    JoinGrant,
    JoinRequest,
    PassBack,
    extend_by,
    offer_of,
    passback,
)

__all__ = ["RoutingAuthorizer", "route_of"]


def route_of(
    routes: Sequence[RouteConfig], request: BrowserRequest
) -> tuple[RouteConfig, dict[str, str]] | None:
    """The request's route and its pattern's named groups.

    The gateway matches the route once and carries it in the request (``route``,
    ``params``); a request built without one (a direct caller) is matched here, first
    pattern first, as the gateway does.
    """
    if request.route:
        for route in routes:
            if route.name == request.route:
                return route, dict(request.params)
        return None
    for route in routes:
        found = route.pattern.search(request.path)
        if found is not None:
            return route, {k: v for k, v in found.groupdict().items() if v is not None}
    return None


class Closable(Protocol):
    async def aclose(self) -> None: ...


class RoutingAuthorizer:
    """Hands each request to the authorizer of its route's kind; closes them, then what
    they share (``owned``: the clusters' API clients), when closed."""

    def __init__(
        self,
        config: Config,
        by_kind: Mapping[str, Authorizer],
        *,
        owned: Sequence[Closable] = (),
    ) -> None:
        self._routes = config.routes
        self._by_kind = dict(by_kind)
        self._owned = tuple(owned)

    def authorizer_for_kind(self, kind: str) -> Authorizer | None:
        """The authorizer of one route kind (tests, operations)."""
        return self._by_kind.get(kind)

    def _for(self, request: BrowserRequest) -> Authorizer | None:
        found = route_of(self._routes, request)
        kind = "authorization" if found is None else found[0].kind
        return self._by_kind.get(kind)

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        authorizer = self._for(request)
        if authorizer is None:
            return passback(404, "no authorizer for this route")
        return await authorizer.authorize(request)

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        authorizer = self._for(request)
        if authorizer is None:
            return passback(404, "no authorizer for this route")
        return await authorizer.reauthorize(request, grant)

    async def authorize_join(
        self, request: BrowserRequest, join: JoinRequest
    ) -> JoinGrant | PassBack:
        authorizer = self._for(request)
        if not isinstance(authorizer, JoinAuthorizer):
            return passback(403, "joining is not supported on this route")
        return await authorizer.authorize_join(request, join)

    def extension_offer(self, request: BrowserRequest) -> float | None:
        return offer_of(self._for(request), request)

    async def extend(self, request: BrowserRequest, grant: Grant) -> Extension:
        return await extend_by(self._for(request), request, grant)

    async def aclose(self) -> None:
        try:
            # One authorizer may serve several kinds: close each once.
            for authorizer in {id(a): a for a in self._by_kind.values()}.values():
                await authorizer.aclose()
        finally:
            for resource in self._owned:
                await resource.aclose()
