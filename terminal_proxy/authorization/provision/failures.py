"""What the browser and the log are told when provisioning a terminal fails.

What the user or their namespace cannot have (Pod Security, quota, a namespace or node
that does not exist) is a ``ProvisionRefused``: a 403, 429 or 404 with a reason, given to the
browser as the answer of the authorization. What fails on the cluster's side (the gateway's
RBAC, an API error, the cluster unreachable, an image that cannot be pulled, a container
that cannot start, a pod not ready in time) is a ``ProvisioningFailed`` (502) or
``ProvisioningTimeout`` (504) from ``terminal_proxy.errors``: the browser gets the reason
and the request id, the log the detail at warning level. Failures of a running terminal's
heartbeat or extension are ``AuthorizationUnavailable`` (tolerated on re-polls up to
``authorization.poll_failure_grace``).
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from ...errors import AuthorizationUnavailable, ProvisioningFailed
from ...kube.cluster import Cluster, status_message
from .. import PassBack, passback

__all__ = [
    "ProvisionRefused",
    "api_failure",
    "check_started",
    "node_failure",
    "unavailable",
    "unreachable",
    "why",
]

# Waiting reasons that mean the pod will not start by itself.
_PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
_START_FAILURES = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff"}
)


class ProvisionRefused(Exception):
    """The terminal cannot be had (not the cluster's failure); ``answer`` is what the
    browser gets."""

    def __init__(self, answer: PassBack, detail: str) -> None:
        super().__init__(detail)
        self.answer = answer
        self.detail = detail


def why(exc: BaseException) -> str:
    """An exception in a few words for the log."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}: {status_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


def api_failure(
    cluster: Cluster, namespace: str, exc: ApiException, step: str
) -> ProvisionRefused | ProvisioningFailed:
    """The API refused ``step`` (``create pods``…) of provisioning in ``namespace``."""
    message = status_message(exc)
    detail = f"{step} in {namespace} answered {exc.status}: {message}"
    if exc.status == 403 and "violates PodSecurity" in message:
        return ProvisionRefused(
            passback(
                403,
                f"namespace {namespace}'s Pod Security admission refuses the terminal pod: "
                f"{message}",
            ),
            detail,
        )
    if exc.status == 403 and "exceeded quota" in message:
        return ProvisionRefused(
            passback(429, f"namespace {namespace} is over its resource quota: {message}"),
            detail,
        )
    if exc.status in (401, 403):
        return ProvisioningFailed(
            f"the gateway may not {step} in namespace {namespace} of cluster "
            f"{cluster.name} (check its RBAC): {message}",
            detail=detail,
        )
    if exc.status == 404 and step == "create serviceaccounts":
        return ProvisionRefused(
            passback(404, f"namespace {namespace} not found in cluster {cluster.name}"), detail
        )
    return ProvisioningFailed(
        f"cluster {cluster.name} refused to {step}: HTTP {exc.status}: {message}",
        detail=detail,
    )


def node_failure(
    cluster: Cluster, node: str, exc: ApiException
) -> ProvisionRefused | ProvisioningFailed:
    """The API answered an error to reading the node of a node-debug terminal."""
    message = status_message(exc)
    detail = f"get nodes/{node} answered {exc.status}: {message}"
    if exc.status == 404:
        return ProvisionRefused(
            passback(404, f"node {node} not found in cluster {cluster.name}"), detail
        )
    if exc.status in (401, 403):
        return ProvisioningFailed(
            f"the gateway may not get nodes in cluster {cluster.name} (check its RBAC): {message}",
            detail=detail,
        )
    return ProvisioningFailed(
        f"cluster {cluster.name} refused to get node {node}: HTTP {exc.status}: {message}",
        detail=detail,
    )


def unreachable(cluster: Cluster, exc: BaseException) -> ProvisioningFailed:
    return ProvisioningFailed(
        f"cluster {cluster.name} is unreachable", detail=f"cluster unreachable: {why(exc)}"
    )


def unavailable(
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
        f"cluster {cluster.name} is unreachable", detail=f"{what}: {why(exc)}"
    )


def check_started(pod: dict[str, Any], namespace: str, name: str) -> None:
    """ProvisioningFailed if the starting pod (a watch event's raw object) will not start."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        raise ProvisioningFailed(
            f"the terminal pod ended while starting ({status.get('phase')})",
            detail=f"pod {namespace}/{name} phase {status.get('phase')}",
        )
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        message = str(waiting.get("message", ""))[:300]
        if reason in _PULL_FAILURES:
            raise ProvisioningFailed(
                f"the terminal image {container.get('image', '')!r} cannot be pulled: "
                f"{reason}: {message}",
                detail=f"pod {namespace}/{name}: {reason}: {message}",
            )
        if reason in _START_FAILURES:
            raise ProvisioningFailed(
                f"the terminal container cannot start: {reason}: {message}",
                detail=f"pod {namespace}/{name}: {reason}: {message}",
            )
