"""The provisioning authorizer: who asks for which terminal, may they, and the grant.

The terminals themselves (found, created, heartbeated, extended, swept) are ``lifecycle``'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ...channel import ConnectionDetails
from ...config import PROVISION_KINDS, Config, KubernetesProvisionConfig
from ...errors import AuthorizationUnavailable, ProvisioningFailed, ProvisioningTimeout
from ...kube.cluster import Cluster, ClusterError
from ...kube.identity import Identity, IdentityVerifier
from ...kube.review import AccessCheck, impersonation_headers, review
from ...locks import KeyedLocks
from .. import BrowserRequest, Extension, Grant, PassBack, passback
from ..kube_target import kube_target
from .failures import ProvisionRefused
from .lifecycle import Terminals
from .manifests import CONTAINER

__all__ = ["ProvisionAuthorizer"]

log = logging.getLogger("terminal_proxy.provision")

_NAMES = {
    "url": "terminal pod",
    "subprotocols": "subprotocols",
    "headers": "headers",
    "ca_pem": "cluster certificate-authority",
    "max_session_time": "kubernetes.provision.expiry",
}
# A node's name (a DNS subdomain).
_NODE_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class _Target:
    """What a request asks for: a terminal in ``namespace`` (on ``node``: node-debug)."""

    cluster: Cluster
    identity: Identity
    namespace: str
    node: str | None = None


class ProvisionAuthorizer:
    """``kind: kubernetes-provision`` and ``kind: kubernetes-node-debug`` routes."""

    def __init__(self, config: Config, clusters: Mapping[str, Cluster]) -> None:
        self._config: KubernetesProvisionConfig = config.kubernetes.provision
        self._routes = config.routes
        self.clusters = clusters
        self._identity = IdentityVerifier(config.kubernetes.identity)
        self.terminals = Terminals(self._config, clusters)
        # Serialises provisioning per (cluster, namespace, user, node or ""): two tabs
        # opened at once get one terminal. A key is forgotten once nobody holds it.
        self.locks: KeyedLocks[tuple[str, str, str, str]] = KeyedLocks()

    async def start(self) -> None:
        """Start the cleanup loops."""
        await self.terminals.start()

    async def aclose(self) -> None:
        await self.terminals.aclose()

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        target = self._target(request)
        if isinstance(target, PassBack):
            return target
        cluster, identity, namespace, node = (
            target.cluster,
            target.identity,
            target.namespace,
            target.node,
        )
        denied = await self._allowed(target)
        if denied is not None:
            return denied
        key = (cluster.name, namespace, identity.user, node or "")
        terminals = self.terminals
        try:
            if node is not None:
                await terminals.check_node(cluster, node)
            async with self.locks.hold(key):
                terminal = await terminals.find(cluster, namespace, identity.user, node)
                if terminal is None:
                    terminal = await terminals.create(cluster, namespace, identity.user, node)
        except ProvisionRefused as exc:
            log.warning(
                "cluster %s: provisioning for %s failed: %s",
                cluster.name,
                identity.user,
                exc.detail,
            )
            return exc.answer
        except (ProvisioningFailed, ProvisioningTimeout) as exc:
            # The gateway logs it with the request id; the detail says whose it was.
            raise type(exc)(
                exc.public,
                detail=f"cluster {cluster.name}: provisioning for {identity.user} failed: "
                f"{exc.detail}",
            ) from exc
        try:
            bearer = await cluster.bearer()
        except ClusterError as exc:
            raise AuthorizationUnavailable(str(exc)) from exc
        url = cluster.stream_url("exec", namespace, terminal.name, CONTAINER, self._config.shell)
        details = ConnectionDetails.build(
            url=url,
            subprotocols=["channel.k8s.io"],
            headers=impersonation_headers(bearer, identity),
            ca_pem=cluster.ca_pem,
            max_session_time=max(1.0, terminal.expires_at - terminals.clock()),
            names=_NAMES,
        )
        return Grant(details, user=identity.user, groups=identity.groups)

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        target = self._target(request)
        if isinstance(target, PassBack):
            return target
        denied = await self._recheck(target, grant)
        return grant if denied is None else denied

    async def _recheck(self, target: _Target, grant: Grant) -> PassBack | None:
        """Same user, the review still allows it, and the heartbeat finds the terminal."""
        identity = target.identity
        if identity.user != grant.user or identity.groups != grant.groups:
            return passback(403, "the user identity changed")
        denied = await self._allowed(target)
        if denied is not None:
            return denied
        if not await self.terminals.heartbeat(target.cluster, target.namespace, _pod(grant)):
            return passback(410, "the terminal was removed (expired or cleaned up)")
        return None

    # Extensions (the Extender protocol) ---------------------------------------------------

    def extension_offer(self, request: BrowserRequest) -> float | None:
        if self._config.max_expiry <= self._config.expiry:
            return 0.0
        return self._config.extension

    async def extend(self, request: BrowserRequest, grant: Grant) -> Extension:
        """Re-run the review (and heartbeat), then move the terminal's expiry on by
        ``extension``, at most to its creation + ``max_expiry``."""
        target = self._target(request)
        if isinstance(target, PassBack) or await self._recheck(target, grant) is not None:
            return Extension(None, "authorization does not allow it")
        return await self.terminals.extend(target.cluster, target.namespace, _pod(grant))

    # The request --------------------------------------------------------------------------

    def _target(self, request: BrowserRequest) -> _Target | PassBack:
        target = kube_target(
            request,
            routes=self._routes,
            kinds=PROVISION_KINDS,
            clusters=self.clusters,
            identity=self._identity,
            not_ours="not a provisioned-terminal route",
        )
        if isinstance(target, PassBack):
            return target
        groups, cluster, identity = target.params, target.cluster, target.identity
        node = None
        if target.route.kind == "kubernetes-node-debug":
            node = groups.get("node") or ""
            if not _NODE_NAME.fullmatch(node):
                return passback(404, f"invalid node name {node!r}")
        return _Target(cluster, identity, groups["namespace"], node)

    async def _allowed(self, target: _Target) -> PassBack | None:
        """The admin-group rule of node-debug terminals, then the access reviews; None if
        the user may have the terminal."""
        checks = [AccessCheck("create", "pods", target.namespace, subresource="exec")]
        if target.node is not None:
            refused = self._refuse_node_debug(target)
            if refused is not None:
                return refused
            # Like kubectl debug node, as the user: create the pod, and exec into it.
            checks.insert(0, AccessCheck("create", "pods", target.namespace))
        return await review(target.cluster, target.identity, checks)

    def _refuse_node_debug(self, target: _Target) -> PassBack | None:
        admin_groups = self._config.node_debug.admin_groups
        user = target.identity.user
        if not admin_groups:
            log.info("node-debug terminal for %s refused: no admin groups configured", user)
            return passback(
                403,
                "node-debug terminals are disabled on this gateway "
                "(kubernetes.provision.node_debug.admin_groups is empty)",
            )
        if set(admin_groups) & set(target.identity.groups):
            return None
        log.info(
            "node-debug terminal on %s for %s refused: not in an admin group (%s)",
            target.node,
            user,
            ", ".join(admin_groups),
        )
        return passback(
            403,
            f"user {user!r} may not open a node-debug terminal on node {target.node}: "
            "not a member of an admin group (kubernetes.provision.node_debug.admin_groups)",
        )


def _pod(grant: Grant) -> str:
    """The terminal (its parent and pod share the name) a provisioned grant execs into."""
    pod = grant.details.target.pod
    assert pod is not None
    return pod
