"""Provisioned terminals: a fresh, least-privilege terminal pod per user and namespace.

For ``kind: kubernetes-provision`` routes (``/k8s-terminal/<cluster>/<namespace>/terminal.ws``):

1. the user is identified and a SubjectAccessReview checks they may ``create pods/exec`` in
   the namespace (what they could do with the terminal they are given);
2. their live terminal in that namespace is reused (a reload reconnects), or a new one is
   created: ServiceAccount (the parent, holding the state), RoleBinding to the configured
   role, TokenRequest, kubeconfig Secret, NetworkPolicy, Pod (see ``manifests``); any
   failure on the way deletes what was created and reaches the browser as a status with
   a reason (403 no permission, 429 quota exceeded, 502 image cannot be pulled, 504 not
   ready in time);
3. the grant execs into the pod with the gateway's credentials impersonating the user, and
   ends at the terminal's expiry (4004); a ``v1.terminal-proxy`` browser is warned before
   and may extend the expiry (``extension`` at a time, up to creation + ``max_expiry``);
4. every re-poll re-runs the review and writes the heartbeat annotation on the parent; a
   cleanup loop deletes terminals whose heartbeat is older than ``heartbeat_timeout`` or
   whose expiry has passed. All state lives in the cluster, so a restarted gateway (or
   another replica) cleans up what an earlier one created; deletes are idempotent.

``kind: kubernetes-node-debug`` routes (``/k8s-node-debug/<cluster>/<namespace>/<node>/
terminal.ws``) get the node-debug variant: a privileged pod on ``<node>`` with the host's
PID, network and IPC namespaces and its ``/`` at ``/host``. Only members of
``provision.node_debug.admin_groups`` may have one (403 for anyone else, before any API
request); the reviews also require ``create pods`` in the namespace; a node that does not
exist is a 404. Same parent, heartbeat, expiry and cleanup as every terminal.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException

from ...channel import ConnectionDetails
from ...config import PROVISION_KINDS, Config, IPNetwork, KubernetesProvisionConfig
from ...errors import AuthorizationUnavailable
from ...kube.cluster import API_TIMEOUT, Cluster, ClusterError, status_message
from ...kube.identity import Identity, IdentityVerifier
from ...kube.review import AccessCheck, impersonation_headers, review
from ...tasks import cancel_and_wait, spawn
from .. import BrowserRequest, Extension, Grant, PassBack, passback
from ..routing import match_route
from .manifests import (
    ANNOTATION_EXPIRES,
    ANNOTATION_HEARTBEAT,
    ANNOTATION_MAX_EXPIRES,
    ANNOTATION_NODE,
    ANNOTATION_USER,
    CONTAINER,
    LABEL_USER,
    MANAGED_SELECTOR,
    SessionObjects,
    user_label,
)

__all__ = ["ProvisionAuthorizer", "ProvisionFailed", "Terminal"]

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
# Waiting reasons that mean the pod will not start by itself.
_PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
_START_FAILURES = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff"}
)


def wall_clock() -> float:
    """Unix seconds: what heartbeat and expiry annotations hold."""
    return time.time()


class ProvisionFailed(Exception):
    """Provisioning failed; ``answer`` is what the browser gets."""

    def __init__(self, answer: PassBack, detail: str) -> None:
        super().__init__(detail)
        self.answer = answer
        self.detail = detail


@dataclass(frozen=True, slots=True)
class _Target:
    """What a request asks for: a terminal in ``namespace`` (on ``node``: node-debug)."""

    cluster: Cluster
    identity: Identity
    namespace: str
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Terminal:
    """A provisioned terminal: its parent's name and when it expires."""

    cluster: str
    namespace: str
    name: str
    user: str
    expires_at: float
    node: str | None = None


def _annotation(obj: Any, key: str) -> str:
    annotations = obj.metadata.annotations or {}
    return str(annotations.get(key, ""))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


class ProvisionAuthorizer:
    """``kind: kubernetes-provision`` routes; owns one cleanup loop per cluster."""

    def __init__(self, config: Config, clusters: Mapping[str, Cluster]) -> None:
        self._config: KubernetesProvisionConfig = config.kubernetes.provision
        self._routes = config.routes
        self.clusters = clusters
        self._identity = IdentityVerifier(config.kubernetes.identity)
        self._tasks: list[asyncio.Task[None]] = []
        # Wall clock (annotations hold Unix seconds); tests move it.
        self.clock: Callable[[], float] = lambda: wall_clock()
        # Serialises provisioning per (cluster, namespace, user, node or ""): two tabs
        # opened at once get one terminal.
        self._locks: dict[tuple[str, str, str, str], asyncio.Lock] = {}

    # Lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for cluster in self.clusters.values():
            self._tasks.append(
                spawn(self._cleanup_loop(cluster), name=f"provision-cleanup-{cluster.name}")
            )

    async def aclose(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def _cleanup_loop(self, cluster: Cluster) -> None:
        while True:
            try:
                await self.sweep(cluster)
            except Exception as exc:  # the loop must outlive any one failed sweep
                log.warning("cluster %s: terminal cleanup failed: %s", cluster.name, _why(exc))
            await asyncio.sleep(self._config.cleanup_interval)

    async def sweep(self, cluster: Cluster) -> list[str]:
        """Delete every terminal past its expiry or without a recent heartbeat; returns
        ``namespace/name`` of those deleted. Safe to run on several replicas at once."""
        core = k8s.CoreV1Api(cluster.api)
        listed = await core.list_service_account_for_all_namespaces(
            label_selector=MANAGED_SELECTOR, _request_timeout=API_TIMEOUT
        )
        now = self.clock()
        deleted = []
        for parent in listed.items:
            heartbeat = _number(_annotation(parent, ANNOTATION_HEARTBEAT))
            expires = _number(_annotation(parent, ANNOTATION_EXPIRES))
            if now >= expires:
                why = "expired"
            elif now - heartbeat > self._config.heartbeat_timeout:
                why = f"no heartbeat for {now - heartbeat:.0f}s"
            else:
                continue
            namespace, name = parent.metadata.namespace, parent.metadata.name
            await _delete_parent(core, namespace, name)
            log.info("cluster %s: deleted terminal %s/%s (%s)", cluster.name, namespace, name, why)
            deleted.append(f"{namespace}/{name}")
        return deleted

    # Authorizer ---------------------------------------------------------------------------

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
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            if node is not None:
                await self._check_node(cluster, node)
            async with lock:
                terminal = await self._find(cluster, namespace, identity.user, node)
                if terminal is None:
                    terminal = await self._provision(cluster, namespace, identity.user, node)
        except ProvisionFailed as exc:
            log.warning(
                "cluster %s: provisioning for %s failed: %s",
                cluster.name,
                identity.user,
                exc.detail,
            )
            return exc.answer
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
            max_session_time=max(1.0, terminal.expires_at - self.clock()),
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
        if not await self.heartbeat(target.cluster, target.namespace, _pod(grant)):
            return passback(410, "the terminal was removed (expired or cleaned up)")
        return None

    async def heartbeat(self, cluster: Cluster, namespace: str, name: str) -> bool:
        """Write the heartbeat annotation; False if the terminal is gone."""
        core = k8s.CoreV1Api(cluster.api)
        patch = {"metadata": {"annotations": {ANNOTATION_HEARTBEAT: str(int(self.clock()))}}}
        try:
            await core.patch_namespaced_service_account(
                name, namespace, patch, _request_timeout=API_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _unavailable(cluster, "heartbeat", namespace, name, exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unavailable(cluster, "heartbeat", namespace, name, exc) from exc
        return True

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
        return await self.extend_terminal(target.cluster, target.namespace, _pod(grant))

    async def extend_terminal(self, cluster: Cluster, namespace: str, name: str) -> Extension:
        """Write a later expires-at on the parent. The write is conditional on the
        resourceVersion read, so two sessions (tabs, replicas) extending at once extend
        once each, never overwrite each other."""
        core = k8s.CoreV1Api(cluster.api)
        for _ in range(3):
            try:
                parent = await core.read_namespaced_service_account(
                    name, namespace, _request_timeout=API_TIMEOUT
                )
            except ApiException as exc:
                if exc.status == 404:
                    return Extension(None, "the terminal was removed")
                raise _unavailable(cluster, "extension", namespace, name, exc) from exc
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _unavailable(cluster, "extension", namespace, name, exc) from exc
            expires = _number(_annotation(parent, ANNOTATION_EXPIRES))
            # Terminals created before max-expires-at existed cannot be extended.
            ceiling = _number(_annotation(parent, ANNOTATION_MAX_EXPIRES)) or expires
            extended = min(expires + self._config.extension, ceiling)
            now = self.clock()
            if extended - expires < 1:
                return Extension(
                    None,
                    f"the terminal has reached its maximum lifetime "
                    f"(kubernetes.provision.max_expiry: {self._config.max_expiry:g}s)",
                )
            patch = {
                "metadata": {
                    "resourceVersion": parent.metadata.resource_version,
                    "annotations": {ANNOTATION_EXPIRES: str(int(extended))},
                }
            }
            try:
                await core.patch_namespaced_service_account(
                    name, namespace, patch, _request_timeout=API_TIMEOUT
                )
            except ApiException as exc:
                if exc.status == 409:
                    continue  # extended (or heartbeated) meanwhile: read it again
                if exc.status == 404:
                    return Extension(None, "the terminal was removed")
                raise _unavailable(cluster, "extension", namespace, name, exc) from exc
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _unavailable(cluster, "extension", namespace, name, exc) from exc
            log.info(
                "cluster %s: terminal %s/%s extended by %ds (expires in %ds)",
                cluster.name,
                namespace,
                name,
                int(extended) - int(expires),
                int(extended - now),
            )
            return Extension(max(0.0, int(extended) - now), last=int(extended) >= int(ceiling))
        raise AuthorizationUnavailable(
            f"cluster {cluster.name}: the terminal's expiry kept changing",
            detail=f"extend {namespace}/{name}: 3 conflicting writes",
        )

    async def aclose_terminal(self, cluster: Cluster, namespace: str, name: str) -> None:
        await _delete_parent(k8s.CoreV1Api(cluster.api), namespace, name)

    def _target(self, request: BrowserRequest) -> _Target | PassBack:
        found = match_route(self._routes, request.path)
        if found is None or found[0].kind not in PROVISION_KINDS:
            return passback(404, "not a provisioned-terminal route")
        groups = found[1].groupdict()
        cluster = self.clusters.get(groups["cluster"])
        if cluster is None:
            return passback(404, f"no cluster named {groups['cluster']!r} is configured")
        identity = self._identity.identify(request)
        if isinstance(identity, PassBack):
            return identity
        node = None
        if found[0].kind == "kubernetes-node-debug":
            node = groups.get("node") or ""
            if not _NODE_NAME.fullmatch(node):
                return passback(404, f"invalid node name {node!r}")
        return _Target(cluster, identity, groups["namespace"], node)

    async def _allowed(self, target: _Target) -> PassBack | None:
        """The admin-group rule of node-debug terminals, then the access reviews; None if
        the user may have the terminal."""
        checks = [_exec_check(target.namespace)]
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

    async def _check_node(self, cluster: Cluster, node: str) -> None:
        """ProvisionFailed 404 unless ``node`` exists (before anything is created)."""
        core = k8s.CoreV1Api(cluster.api)
        try:
            await core.read_node(node, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            message = status_message(exc)
            detail = f"get nodes/{node} answered {exc.status}: {message}"
            if exc.status == 404:
                raise ProvisionFailed(
                    passback(404, f"node {node} not found in cluster {cluster.name}"), detail
                ) from exc
            if exc.status in (401, 403):
                raise ProvisionFailed(
                    passback(
                        502,
                        f"the gateway may not get nodes in cluster {cluster.name} "
                        f"(check its RBAC): {message}",
                    ),
                    detail,
                ) from exc
            raise ProvisionFailed(
                passback(
                    502,
                    f"cluster {cluster.name} refused to get node {node}: "
                    f"HTTP {exc.status}: {message}",
                ),
                detail,
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(cluster, exc) from exc

    # Provisioning -------------------------------------------------------------------------

    async def _find(
        self, cluster: Cluster, namespace: str, user: str, node: str | None = None
    ) -> Terminal | None:
        """The user's live terminal in ``namespace`` (a reconnect), if there is one: of the
        same variant (a normal terminal, or node-debug on the same node)."""
        core = k8s.CoreV1Api(cluster.api)
        try:
            listed = await core.list_namespaced_service_account(
                namespace,
                label_selector=f"{MANAGED_SELECTOR},{LABEL_USER}={user_label(user)}",
                _request_timeout=API_TIMEOUT,
            )
        except ApiException as exc:
            raise self._failure(cluster, namespace, exc, "list serviceaccounts") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _unreachable(cluster, exc) from exc
        now = self.clock()
        for parent in listed.items:
            expires = _number(_annotation(parent, ANNOTATION_EXPIRES))
            if _annotation(parent, ANNOTATION_USER) != user or expires - now < 60:
                continue
            if _annotation(parent, ANNOTATION_NODE) != (node or ""):
                continue
            name = parent.metadata.name
            try:
                pod = await core.read_namespaced_pod(name, namespace, _request_timeout=API_TIMEOUT)
            except ApiException:
                continue
            if _ready(pod):
                return Terminal(cluster.name, namespace, name, user, expires, node)
        return None

    async def _provision(
        self, cluster: Cluster, namespace: str, user: str, node: str | None = None
    ) -> Terminal:
        objects = SessionObjects(
            self._config,
            secrets.token_hex(5),
            namespace,
            user,
            self.clock(),
            api_server_cidrs=self._api_cidrs(cluster),
            node=node,
        )
        core = k8s.CoreV1Api(cluster.api)
        rbac = k8s.RbacAuthorizationV1Api(cluster.api)
        net = k8s.NetworkingV1Api(cluster.api)
        created = False
        name = objects.name
        timeout = API_TIMEOUT
        step = "create serviceaccounts"
        try:
            parent = await core.create_namespaced_service_account(
                namespace, objects.parent(), _request_timeout=timeout
            )
            created = True
            owner = objects.owner(parent.metadata.uid)
            if node is not None:
                # Node-debug: the parent and the privileged pod, nothing else.
                step = "create pods"
                await core.create_namespaced_pod(
                    namespace, objects.node_debug_pod(owner), _request_timeout=timeout
                )
                step = "wait for the pod"
                await self._wait_ready(cluster, core, namespace, name)
                return self._provisioned(cluster, objects)
            step = "create rolebindings"
            await rbac.create_namespaced_role_binding(
                namespace, objects.role_binding(owner), _request_timeout=timeout
            )
            step = "create serviceaccounts/token"
            token = await core.create_namespaced_service_account_token(
                name, namespace, objects.token_request(), _request_timeout=timeout
            )
            step = "create secrets"
            secret = objects.kubeconfig_secret(owner, token.status.token, cluster.ca_pem)
            await core.create_namespaced_secret(namespace, secret, _request_timeout=timeout)
            step = "create networkpolicies"
            await net.create_namespaced_network_policy(
                namespace, objects.network_policy(owner), _request_timeout=timeout
            )
            step = "create pods"
            await core.create_namespaced_pod(
                namespace, objects.pod(owner), _request_timeout=timeout
            )
            step = "wait for the pod"
            await self._wait_ready(cluster, core, namespace, name)
        except BaseException as exc:
            if created:
                await _rollback(core, rbac, net, namespace, name)
            if isinstance(exc, ApiException):
                raise self._failure(cluster, namespace, exc, step) from exc
            if isinstance(exc, aiohttp.ClientError | OSError) or (
                isinstance(exc, TimeoutError) and step != "wait for the pod"
            ):
                raise _unreachable(cluster, exc) from exc
            raise
        return self._provisioned(cluster, objects)

    def _provisioned(self, cluster: Cluster, objects: SessionObjects) -> Terminal:
        on = "" if objects.node is None else f" (node-debug on node {objects.node})"
        log.info(
            "cluster %s: provisioned terminal %s/%s for %s%s",
            cluster.name,
            objects.namespace,
            objects.name,
            objects.user,
            on,
        )
        return Terminal(
            cluster.name,
            objects.namespace,
            objects.name,
            objects.user,
            objects.expires_at,
            objects.node,
        )

    async def _wait_ready(self, cluster: Cluster, core: Any, namespace: str, name: str) -> None:
        ready_timeout = self._config.ready_timeout
        watcher = k8s_watch.Watch()
        try:
            async with asyncio.timeout(ready_timeout):
                while True:
                    async with watcher.stream(
                        core.list_namespaced_pod,
                        namespace,
                        field_selector=f"metadata.name={name}",
                        timeout_seconds=max(1, int(ready_timeout)),
                    ) as stream:
                        async for event in stream:
                            pod = event["raw_object"]
                            if event["type"] == "DELETED":
                                raise ProvisionFailed(
                                    passback(502, "the terminal pod was deleted while starting"),
                                    f"pod {namespace}/{name} deleted while starting",
                                )
                            _check_started(pod, namespace, name)
                            if _ready_raw(pod):
                                return
        except TimeoutError:
            raise ProvisionFailed(
                passback(
                    504,
                    f"the terminal pod was not ready within {ready_timeout:g}s "
                    "(kubernetes.provision.ready_timeout)",
                ),
                f"pod {namespace}/{name} not ready within {ready_timeout:g}s",
            ) from None
        finally:
            watcher.stop()

    def _api_cidrs(self, cluster: Cluster) -> tuple[IPNetwork, ...]:
        if self._config.api_server_cidrs:
            return self._config.api_server_cidrs
        import ipaddress

        host = cluster.server.host or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return ()
        return (ipaddress.ip_network(f"{address}/{address.max_prefixlen}"),)

    def _failure(
        self, cluster: Cluster, namespace: str, exc: ApiException, step: str
    ) -> ProvisionFailed:
        message = status_message(exc)
        detail = f"{step} in {namespace} answered {exc.status}: {message}"
        if exc.status == 403 and "violates PodSecurity" in message:
            return ProvisionFailed(
                passback(
                    403,
                    f"namespace {namespace}'s Pod Security admission refuses the terminal pod: "
                    f"{message}",
                ),
                detail,
            )
        if exc.status == 403 and "exceeded quota" in message:
            return ProvisionFailed(
                passback(429, f"namespace {namespace} is over its resource quota: {message}"),
                detail,
            )
        if exc.status in (401, 403):
            return ProvisionFailed(
                passback(
                    502,
                    f"the gateway may not {step} in namespace {namespace} of cluster "
                    f"{cluster.name} (check its RBAC): {message}",
                ),
                detail,
            )
        if exc.status == 404 and step == "create serviceaccounts":
            return ProvisionFailed(
                passback(404, f"namespace {namespace} not found in cluster {cluster.name}"), detail
            )
        return ProvisionFailed(
            passback(
                502, f"cluster {cluster.name} refused to {step}: HTTP {exc.status}: {message}"
            ),
            detail,
        )


def _exec_check(namespace: str) -> AccessCheck:
    return AccessCheck("create", "pods", namespace, subresource="exec")


def _pod(grant: Grant) -> str:
    """The terminal (its parent and pod share the name) a provisioned grant execs into."""
    pod = grant.details.target.pod
    assert pod is not None
    return pod


def _unavailable(
    cluster: Cluster, what: str, namespace: str, name: str, exc: BaseException
) -> AuthorizationUnavailable:
    """The cluster refused (an API error) or could not be reached for the terminal's
    ``what`` (heartbeat, extension)."""
    if isinstance(exc, ApiException):
        return AuthorizationUnavailable(
            f"cluster {cluster.name} refused the terminal's {what}: HTTP {exc.status}",
            detail=f"{what} of {namespace}/{name}: {status_message(exc)}",
        )
    return AuthorizationUnavailable(
        f"cluster {cluster.name} is unreachable", detail=f"{what}: {_why(exc)}"
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}: {status_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


def _unreachable(cluster: Cluster, exc: BaseException) -> ProvisionFailed:
    return ProvisionFailed(
        passback(502, f"cluster {cluster.name} is unreachable"), f"cluster unreachable: {_why(exc)}"
    )


def _ready(pod: Any) -> bool:
    statuses = (pod.status and pod.status.container_statuses) or []
    return bool(
        pod.status and pod.status.phase == "Running" and statuses and all(s.ready for s in statuses)
    )


def _ready_raw(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return (
        status.get("phase") == "Running"
        and bool(statuses)
        and all(s.get("ready") for s in statuses)
    )


def _check_started(pod: dict[str, Any], namespace: str, name: str) -> None:
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        raise ProvisionFailed(
            passback(502, f"the terminal pod ended while starting ({status.get('phase')})"),
            f"pod {namespace}/{name} phase {status.get('phase')}",
        )
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        message = str(waiting.get("message", ""))[:300]
        if reason in _PULL_FAILURES:
            raise ProvisionFailed(
                passback(
                    502,
                    f"the terminal image {container.get('image', '')!r} cannot be pulled: "
                    f"{reason}: {message}",
                ),
                f"pod {namespace}/{name}: {reason}: {message}",
            )
        if reason in _START_FAILURES:
            raise ProvisionFailed(
                passback(502, f"the terminal container cannot start: {reason}: {message}"),
                f"pod {namespace}/{name}: {reason}: {message}",
            )


async def _delete_parent(core: Any, namespace: str, name: str) -> None:
    """Delete the parent; the garbage collector removes what it owns. 404 is success."""
    try:
        await core.delete_namespaced_service_account(
            name, namespace, propagation_policy="Background", _request_timeout=API_TIMEOUT
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


async def _rollback(core: Any, rbac: Any, net: Any, namespace: str, name: str) -> None:
    """Remove a half-created terminal: the children at once (not waiting for the garbage
    collector), then the parent. Best effort; the cleanup loop catches what is left."""
    deletes = [
        (core.delete_namespaced_pod, "pods"),
        (net.delete_namespaced_network_policy, "networkpolicies"),
        (core.delete_namespaced_secret, "secrets"),
        (rbac.delete_namespaced_role_binding, "rolebindings"),
        (core.delete_namespaced_service_account, "serviceaccounts"),
    ]
    for delete, kind in deletes:
        try:
            await delete(name, namespace, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                log.warning(
                    "rollback: deleting %s %s/%s failed: %s", kind, namespace, name, _why(exc)
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("rollback: deleting %s %s/%s failed: %s", kind, namespace, name, _why(exc))
