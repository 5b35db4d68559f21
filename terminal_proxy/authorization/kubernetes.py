"""The Kubernetes authorizer: the cluster itself decides, as the user.

For ``kind: kubernetes`` routes (``/k8s/<cluster>/<namespace>/<pod>/<container>/terminal.ws``)
there is no external authorization API. The user comes from a trusted source in front of
the gateway (an authenticating proxy's header, believed only from configured networks, or
a bearer JWT verified against configured public keys); a SubjectAccessReview asks the
cluster whether this user may ``create pods/exec`` (or ``pods/attach``) and ``get pods`` on
the target; the grant dials the cluster's exec URL with the gateway's own credentials plus
``Impersonate-User`` / ``Impersonate-Group``, so the API server applies RBAC as the user and
its audit log names them. Every re-poll re-runs the review: a revoked RoleBinding ends the
session with 4001. A join of a shared session on the pod is reviewed the same way: ``get``
on the pod makes a viewer, ``create`` on the exec/attach subresource too a writer.

The cluster-client layer (clusters, identity, reviews) is ``terminal_proxy.kube``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..channel import ConnectionDetails
from ..config import Config
from ..errors import AuthorizationUnavailable
from ..kube.cluster import Cluster, ClusterError
from ..kube.identity import Identity, IdentityVerifier
from ..kube.review import AccessCheck, impersonation_headers, review
from . import BrowserRequest, Grant, JoinGrant, JoinRequest, PassBack, passback
from .kube_target import kube_target

__all__ = ["KubernetesAuthorizer"]

_NAMES = {
    "url": "cluster server",
    "subprotocols": "subprotocols",
    "headers": "headers",
    "ca_pem": "cluster certificate-authority",
    "max_session_time": "kubernetes.max_session_time",
}
_SUBPROTOCOLS = ["channel.k8s.io"]  # the gateway offers v5 and v4 first


class KubernetesAuthorizer:
    """``kind: kubernetes`` routes: an existing pod's container, reviewed and impersonated."""

    def __init__(self, config: Config, clusters: Mapping[str, Cluster]) -> None:
        self._config = config.kubernetes
        self._routes = config.routes
        self._clusters = clusters
        self._identity = IdentityVerifier(config.kubernetes.identity)

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        target = self._target(request)
        if isinstance(target, PassBack):
            return target
        cluster, identity, verb, groups = target
        denied = await review(cluster, identity, self._checks(verb, groups))
        if denied is not None:
            return denied
        url = cluster.stream_url(
            verb, groups["namespace"], groups["pod"], groups["container"], self._config.command
        )
        try:
            bearer = await cluster.bearer()
        except ClusterError as exc:
            raise AuthorizationUnavailable(str(exc)) from exc
        details = ConnectionDetails.build(
            url=url,
            subprotocols=list(_SUBPROTOCOLS),
            headers=impersonation_headers(bearer, identity),
            ca_pem=cluster.ca_pem,
            max_session_time=self._config.max_session_time,
            names=_NAMES,
        )
        return Grant(details, user=identity.user, groups=identity.groups)

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        target = self._target(request)
        if isinstance(target, PassBack):
            return target
        cluster, identity, verb, groups = target
        if identity.user != grant.user or identity.groups != grant.groups:
            return passback(403, "the user identity changed")
        denied = await review(cluster, identity, self._checks(verb, groups))
        # The same grant (not rebuilt): a rotated gateway token must not end the session.
        return grant if denied is None else denied

    async def authorize_join(
        self, request: BrowserRequest, join: JoinRequest
    ) -> JoinGrant | PassBack:
        """A join of a shared terminal on this pod (docs/sharing.md): a viewer needs ``get``
        on the pod, a writer also ``create`` on its ``pods/exec`` (or ``pods/attach``),
        reviewed as the joining user."""
        target = self._target(request)
        if isinstance(target, PassBack):
            return target
        cluster, identity, verb, groups = target
        namespace, pod = groups["namespace"], groups["pod"]
        denied = await review(cluster, identity, [AccessCheck("get", "pods", namespace, name=pod)])
        if denied is not None:
            return denied
        write = AccessCheck("create", "pods", namespace, subresource=verb, name=pod)
        role = "writer" if await review(cluster, identity, [write]) is None else "viewer"
        return JoinGrant(role, user=identity.user, groups=identity.groups)

    async def aclose(self) -> None:
        return None

    def _checks(self, verb: str, groups: Mapping[str, str]) -> list[AccessCheck]:
        namespace, pod = groups["namespace"], groups["pod"]
        return [
            AccessCheck("create", "pods", namespace, subresource=verb, name=pod),
            AccessCheck("get", "pods", namespace, name=pod),
        ]

    def _target(
        self, request: BrowserRequest
    ) -> tuple[Cluster, Identity, str, dict[str, str]] | PassBack:
        target = kube_target(
            request,
            routes=self._routes,
            kinds=("kubernetes",),
            clusters=self._clusters,
            identity=self._identity,
            not_ours="not a Kubernetes terminal route",
        )
        if isinstance(target, PassBack):
            return target
        cluster, identity, groups = target.cluster, target.identity, target.params
        verb = groups.get("verb", "exec")
        if verb not in ("exec", "attach"):
            return passback(404, f"unknown verb {verb!r} (exec or attach)")
        return cluster, identity, verb, groups
