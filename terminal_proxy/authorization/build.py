"""The one place the gateway's Kubernetes authorizers are built.

The interface (``terminal_proxy.authorization``) and the per-route dispatch (``routing``)
never import an implementation; this factory does, and the app imports it only when a
route is decided by the gateway's Kubernetes authorizers (kubernetes_asyncio costs ~0.3 s
and tens of MB to import).
"""

from __future__ import annotations

import dataclasses
import logging

from ..config import PROVISION_KINDS, Config, UpstreamConfig
from ..kube.cluster import load_clusters
from . import Authorizer
from .kubernetes import KubernetesAuthorizer
from .provision import ProvisionAuthorizer
from .routing import RoutingAuthorizer

__all__ = ["with_kubernetes"]

log = logging.getLogger("terminal_proxy.kubernetes")


async def with_kubernetes(
    config: Config, api: Authorizer | None
) -> tuple[RoutingAuthorizer, UpstreamConfig]:
    """Load the clusters and build the routing authorizer (``api`` decides routes of
    ``kind: authorization``); the upstream allowlist gains every cluster's API host:port
    (so a cluster never needs listing twice)."""
    clusters = await load_clusters(config.kubernetes)
    try:
        by_kind: dict[str, Authorizer] = {}
        if api is not None:
            by_kind["authorization"] = api
        kinds = {route.kind for route in config.routes}
        if "kubernetes" in kinds:
            by_kind["kubernetes"] = KubernetesAuthorizer(config, clusters)
        if kinds & PROVISION_KINDS:
            # One provisioner serves both kinds: one cleanup loop per cluster.
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
    return RoutingAuthorizer(config, by_kind, owned=tuple(clusters.values())), upstream
