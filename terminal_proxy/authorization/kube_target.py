"""What every Kubernetes authorizer works out first: the request's route (one of its
kinds), the cluster the route names, and who the user is, or the answer that says which
of them is missing (404 for a route or cluster, the identity's own refusal)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ..config import RouteConfig
from ..kube.cluster import Cluster
from ..kube.identity import Identity, IdentityVerifier
from . import BrowserRequest, PassBack, passback
from .routing import route_of

__all__ = ["KubeTarget", "kube_target"]


@dataclass(frozen=True, slots=True)
class KubeTarget:
    route: RouteConfig
    # The route pattern's named groups (namespace, pod, container, node, …).
    params: dict[str, str]
    cluster: Cluster
    identity: Identity


def kube_target(
    request: BrowserRequest,
    *,
    routes: Sequence[RouteConfig],
    kinds: Collection[str],
    clusters: Mapping[str, Cluster],
    identity: IdentityVerifier,
    not_ours: str,
) -> KubeTarget | PassBack:
    """The route, cluster and identity of ``request``; ``not_ours``: the 404's reason when
    the route is not of ``kinds``."""
    found = route_of(routes, request)
    if found is None or found[0].kind not in kinds:
        return passback(404, not_ours)
    route, params = found
    cluster = clusters.get(params["cluster"])
    if cluster is None:
        return passback(404, f"no cluster named {params['cluster']!r} is configured")
    who = identity.identify(request)
    if isinstance(who, PassBack):
        return who
    return KubeTarget(route, params, cluster, who)
