"""Per-route authorizers: the authorization API, or the gateway's Kubernetes authorizers.

Routes of ``kind: authorization`` (every default route) go to the configured authorization
API; ``kind: kubernetes`` to :class:`~.kubernetes.KubernetesAuthorizer`;
``kind: kubernetes-provision`` and ``kind: kubernetes-node-debug`` to one
:class:`~terminal_proxy.provision.ProvisionAuthorizer` (one cleanup loop for both).
The route is found the way the gateway finds it (first pattern that matches the path).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence

from ..config import PROVISION_KINDS, Config, RouteConfig, UpstreamConfig
from ..kube.cluster import Cluster, load_clusters
from . import (
    Authorizer,
    BrowserRequest,
    Extension,
    Grant,
    PassBack,
    extend_by,
    offer_of,
    passback,
)

__all__ = ["RoutingAuthorizer", "match_route", "uses_kubernetes", "with_kubernetes"]

log = logging.getLogger("terminal_proxy.kubernetes")


def match_route(
    routes: Sequence[RouteConfig], path: str
) -> tuple[RouteConfig, re.Match[str]] | None:
    """The first route whose pattern matches ``path`` (the gateway's own order)."""
    for route in routes:
        found = route.pattern.search(path)
        if found is not None:
            return route, found
    return None


def uses_kubernetes(config: Config) -> bool:
    """Whether any route is decided by the gateway's Kubernetes authorizers."""
    return any(route.kind != "authorization" for route in config.routes)


class RoutingAuthorizer:
    """Hands each request to the authorizer of its route's kind."""

    def __init__(
        self,
        config: Config,
        by_kind: Mapping[str, Authorizer],
        clusters: Mapping[str, Cluster],
    ) -> None:
        self._routes = config.routes
        self._by_kind = dict(by_kind)
        self._clusters = dict(clusters)

    def authorizer_for_kind(self, kind: str) -> Authorizer | None:
        """The authorizer of one route kind (tests, operations)."""
        return self._by_kind.get(kind)

    def _for(self, request: BrowserRequest) -> Authorizer | None:
        found = match_route(self._routes, request.path)
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
            for cluster in self._clusters.values():
                await cluster.aclose()


async def with_kubernetes(
    config: Config, api: Authorizer | None
) -> tuple[RoutingAuthorizer, UpstreamConfig]:
    """Load the clusters and build the routing authorizer; the upstream allowlist gains
    every cluster's API host:port (so a cluster never needs listing twice)."""
    clusters = await load_clusters(config.kubernetes)
    try:
        by_kind: dict[str, Authorizer] = {}
        if api is not None:
            by_kind["authorization"] = api
        kinds = {route.kind for route in config.routes}
        if "kubernetes" in kinds:
            from .kubernetes import KubernetesAuthorizer

            by_kind["kubernetes"] = KubernetesAuthorizer(config, clusters)
        if kinds & PROVISION_KINDS:
            from ..provision import ProvisionAuthorizer

            provisioner = ProvisionAuthorizer(config, clusters)
            await provisioner.start()
            for kind in kinds & PROVISION_KINDS:
                by_kind[kind] = provisioner
    except BaseException:
        for cluster in clusters.values():
            await cluster.aclose()
        raise
    hosts = tuple(cluster.host_pattern for cluster in clusters.values())
    for cluster in clusters.values():
        log.info("cluster %s: %s (added to the upstream allowlist)", cluster.name, cluster.server)
    upstream = dataclasses.replace(
        config.upstream, allowed_hosts=(*config.upstream.allowed_hosts, *hosts)
    )
    return RoutingAuthorizer(config, by_kind, clusters), upstream
