"""What the browser and the log are told when provisioning a terminal fails.

API errors of the gateway's own requests, an unreachable cluster and pods that will not
start become a ``ProvisionFailed`` (a status with a reason for the browser, a detail for
the log); failures of a running terminal's heartbeat or extension become
``AuthorizationUnavailable`` (tolerated on re-polls up to ``authorization.poll_failure_grace``).
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from ...errors import AuthorizationUnavailable
from ...kube.cluster import Cluster, status_message
from .. import PassBack, passback

__all__ = [
    "ProvisionFailed",
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


class ProvisionFailed(Exception):
    """Provisioning failed; ``answer`` is what the browser gets."""

    def __init__(self, answer: PassBack, detail: str) -> None:
        super().__init__(detail)
        self.answer = answer
        self.detail = detail


def why(exc: BaseException) -> str:
    """An exception in a few words for the log."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}: {status_message(exc)}"
    return f"{type(exc).__name__}: {exc}"


def api_failure(cluster: Cluster, namespace: str, exc: ApiException, step: str) -> ProvisionFailed:
    """The API refused ``step`` (``create pods``…) of provisioning in ``namespace``."""
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
        passback(502, f"cluster {cluster.name} refused to {step}: HTTP {exc.status}: {message}"),
        detail,
    )


def node_failure(cluster: Cluster, node: str, exc: ApiException) -> ProvisionFailed:
    """The API answered an error to reading the node of a node-debug terminal."""
    message = status_message(exc)
    detail = f"get nodes/{node} answered {exc.status}: {message}"
    if exc.status == 404:
        return ProvisionFailed(
            passback(404, f"node {node} not found in cluster {cluster.name}"), detail
        )
    if exc.status in (401, 403):
        return ProvisionFailed(
            passback(
                502,
                f"the gateway may not get nodes in cluster {cluster.name} "
                f"(check its RBAC): {message}",
            ),
            detail,
        )
    return ProvisionFailed(
        passback(
            502,
            f"cluster {cluster.name} refused to get node {node}: HTTP {exc.status}: {message}",
        ),
        detail,
    )


def unreachable(cluster: Cluster, exc: BaseException) -> ProvisionFailed:
    return ProvisionFailed(
        passback(502, f"cluster {cluster.name} is unreachable"), f"cluster unreachable: {why(exc)}"
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
    """ProvisionFailed if the starting pod (a watch event's raw object) will not start."""
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
