"""A provisioned terminal's life in the cluster: found or created, heartbeated, extended,
swept.

All state lives in the cluster, on the terminal's parent ServiceAccount (see
``manifests``), so a restarted gateway or another replica finds, extends and cleans up
what an earlier one created; every write is idempotent or conditional.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException

from ...config import IPNetwork, KubernetesProvisionConfig
from ...errors import AuthorizationUnavailable, ProvisioningFailed, ProvisioningTimeout
from ...kube.cluster import API_TIMEOUT, Cluster
from ...tasks import cancel_and_wait, spawn
from .. import Extension
from .failures import (
    api_failure,
    check_started,
    node_failure,
    unavailable,
    unreachable,
    why,
)
from .manifests import (
    ANNOTATION_EXPIRES,
    ANNOTATION_HEARTBEAT,
    ANNOTATION_MAX_EXPIRES,
    ANNOTATION_NODE,
    ANNOTATION_USER,
    LABEL_USER,
    MANAGED_SELECTOR,
    SessionObjects,
    user_label,
)

__all__ = ["Terminal", "Terminals", "wall_clock"]

log = logging.getLogger("terminal_proxy.provision")


def wall_clock() -> float:
    """Unix seconds: what heartbeat and expiry annotations hold."""
    return time.time()


@dataclass(frozen=True, slots=True)
class Terminal:
    """A provisioned terminal: its parent's name and when it expires."""

    cluster: str
    namespace: str
    name: str
    user: str
    expires_at: float
    node: str | None = None


class Terminals:
    """The provisioned terminals of the gateway's clusters; one cleanup loop per cluster."""

    def __init__(self, config: KubernetesProvisionConfig, clusters: Mapping[str, Cluster]) -> None:
        self._config = config
        self._clusters = clusters
        self._tasks: list[asyncio.Task[None]] = []
        # Wall clock (annotations hold Unix seconds); tests move it.
        self.clock: Callable[[], float] = lambda: wall_clock()

    async def start(self) -> None:
        for cluster in self._clusters.values():
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
                log.warning("cluster %s: terminal cleanup failed: %s", cluster.name, why(exc))
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
                reason = "expired"
            elif now - heartbeat > self._config.heartbeat_timeout:
                reason = f"no heartbeat for {now - heartbeat:.0f}s"
            else:
                continue
            namespace, name = parent.metadata.namespace, parent.metadata.name
            await _delete_parent(core, namespace, name)
            log.info(
                "cluster %s: deleted terminal %s/%s (%s)", cluster.name, namespace, name, reason
            )
            deleted.append(f"{namespace}/{name}")
        return deleted

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
            raise unavailable(cluster, "heartbeat", namespace, name, exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise unavailable(cluster, "heartbeat", namespace, name, exc) from exc
        return True

    async def extend(self, cluster: Cluster, namespace: str, name: str) -> Extension:
        """Write a later expires-at on the parent (``extension`` on, at most its creation +
        ``max_expiry``). The write is conditional on the resourceVersion read, so two
        sessions (tabs, replicas) extending at once extend once each, never overwrite each
        other."""
        core = k8s.CoreV1Api(cluster.api)
        for _ in range(3):
            try:
                parent = await core.read_namespaced_service_account(
                    name, namespace, _request_timeout=API_TIMEOUT
                )
            except ApiException as exc:
                if exc.status == 404:
                    return Extension(None, "the terminal was removed")
                raise unavailable(cluster, "extension", namespace, name, exc) from exc
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise unavailable(cluster, "extension", namespace, name, exc) from exc
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
                raise unavailable(cluster, "extension", namespace, name, exc) from exc
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise unavailable(cluster, "extension", namespace, name, exc) from exc
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

    async def check_node(self, cluster: Cluster, node: str) -> None:
        """ProvisionRefused 404 unless ``node`` exists (before anything is created)."""
        core = k8s.CoreV1Api(cluster.api)
        try:
            await core.read_node(node, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            raise node_failure(cluster, node, exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise unreachable(cluster, exc) from exc

    async def find(
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
            raise api_failure(cluster, namespace, exc, "list serviceaccounts") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise unreachable(cluster, exc) from exc
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

    async def create(
        self, cluster: Cluster, namespace: str, user: str, node: str | None = None
    ) -> Terminal:
        """A new terminal, ready; on any failure what was created is deleted again."""
        objects = SessionObjects(
            self._config,
            secrets.token_hex(5),
            namespace,
            user,
            self.clock(),
            api_server_cidrs=_api_cidrs(self._config, cluster),
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
            else:
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
            await _wait_ready(core, namespace, name, self._config.ready_timeout)
        except BaseException as exc:
            if created:
                await _rollback(core, rbac, net, namespace, name)
            if isinstance(exc, ApiException):
                raise api_failure(cluster, namespace, exc, step) from exc
            if isinstance(exc, aiohttp.ClientError | OSError) or (
                isinstance(exc, TimeoutError) and step != "wait for the pod"
            ):
                raise unreachable(cluster, exc) from exc
            raise
        on = "" if node is None else f" (node-debug on node {node})"
        log.info(
            "cluster %s: provisioned terminal %s/%s for %s%s",
            cluster.name,
            namespace,
            name,
            user,
            on,
        )
        return Terminal(cluster.name, namespace, name, user, objects.expires_at, node)


def _annotation(obj: Any, key: str) -> str:
    annotations = obj.metadata.annotations or {}
    return str(annotations.get(key, ""))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _api_cidrs(config: KubernetesProvisionConfig, cluster: Cluster) -> tuple[IPNetwork, ...]:
    """Where the terminal may reach the API server: configured, or the server's address."""
    if config.api_server_cidrs:
        return config.api_server_cidrs
    host = cluster.server.host or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ()
    return (ipaddress.ip_network(f"{address}/{address.max_prefixlen}"),)


async def _wait_ready(core: Any, namespace: str, name: str, ready_timeout: float) -> None:
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
                            raise ProvisioningFailed(
                                "the terminal pod was deleted while starting",
                                detail=f"pod {namespace}/{name} deleted while starting",
                            )
                        check_started(pod, namespace, name)
                        if _ready_raw(pod):
                            return
    except TimeoutError:
        raise ProvisioningTimeout(
            f"the terminal pod was not ready within {ready_timeout:g}s "
            "(kubernetes.provision.ready_timeout)",
            detail=f"pod {namespace}/{name} not ready within {ready_timeout:g}s",
        ) from None
    finally:
        watcher.stop()


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
                    "rollback: deleting %s %s/%s failed: %s", kind, namespace, name, why(exc)
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("rollback: deleting %s %s/%s failed: %s", kind, namespace, name, why(exc))
