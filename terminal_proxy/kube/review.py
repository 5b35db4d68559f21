"""SubjectAccessReviews (may this user do this?) and impersonation (act as them).

The gateway asks the cluster, with its own credentials, whether the user may do what the
terminal lets them do; the exec connection then carries ``Impersonate-User`` /
``Impersonate-Group`` so the API server applies RBAC as the user and its audit log names
them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from ..authorization import PassBack, passback
from ..errors import AuthorizationTimeout, AuthorizationUnavailable, GatewayError
from .cluster import API_TIMEOUT, Cluster, status_message
from .identity import Identity

__all__ = ["AccessCheck", "api_failure", "impersonation_headers", "review"]

log = logging.getLogger("terminal_proxy.kubernetes")


@dataclass(frozen=True, slots=True)
class AccessCheck:
    """One SubjectAccessReview's resource attributes."""

    verb: str
    resource: str
    namespace: str
    subresource: str = ""
    name: str = ""
    group: str = ""

    def describe(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        target = f"{self.namespace}/{self.name}" if self.name else f"namespace {self.namespace}"
        return f"{self.verb} {resource} on {target}"

    def attributes(self) -> dict[str, str]:
        attributes = {
            "namespace": self.namespace,
            "verb": self.verb,
            "group": self.group,
            "resource": self.resource,
        }
        if self.subresource:
            attributes["subresource"] = self.subresource
        if self.name:
            attributes["name"] = self.name
        return attributes


async def review(
    cluster: Cluster, identity: Identity, checks: Sequence[AccessCheck]
) -> PassBack | None:
    """Run one SubjectAccessReview per check, concurrently; a PassBack 403 if any denies.

    Transport failures raise AuthorizationUnavailable / AuthorizationTimeout (tolerated on
    re-polls up to ``authorization.poll_failure_grace``).
    """
    api = k8s.AuthorizationV1Api(cluster.api)
    groups = [*identity.groups, "system:authenticated"]

    async def one(check: AccessCheck) -> tuple[AccessCheck, bool, str]:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": identity.user,
                "groups": groups,
                "resourceAttributes": check.attributes(),
            },
        }
        answer = await api.create_subject_access_review(body, _request_timeout=API_TIMEOUT)
        status = answer.status
        allowed = bool(status is not None and status.allowed and not status.denied)
        reason = "" if status is None else str(status.reason or "")
        return check, allowed, reason

    try:
        results = await asyncio.gather(*(one(check) for check in checks))
    except ApiException as exc:
        raise api_failure(cluster, exc, "create SubjectAccessReviews") from exc
    except TimeoutError as exc:
        raise AuthorizationTimeout(
            f"cluster {cluster.name} did not answer the access review in time"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise AuthorizationUnavailable(
            f"cluster {cluster.name} is unreachable",
            detail=f"access review on cluster {cluster.name} failed: {type(exc).__name__}: {exc}",
        ) from exc
    for check, allowed, reason in results:
        if not allowed:
            log.info(
                "access review denied: user %s may not %s in cluster %s",
                identity.user,
                check.describe(),
                cluster.name,
            )
            because = f" ({reason})" if reason else ""
            return passback(
                403,
                f"user {identity.user!r} may not {check.describe()} in cluster "
                f"{cluster.name!r}{because}",
            )
    return None


def api_failure(cluster: Cluster, exc: ApiException, doing: str) -> GatewayError:
    """An API error of the gateway's own request, as a gateway error for the browser."""
    message = status_message(exc)
    if exc.status in (401, 403):
        return AuthorizationUnavailable(
            f"the gateway may not {doing} in cluster {cluster.name} (check its RBAC)",
            detail=f"cluster {cluster.name}: {doing} answered {exc.status}: {message}",
        )
    return AuthorizationUnavailable(
        f"cluster {cluster.name} refused to {doing}: HTTP {exc.status}",
        detail=f"cluster {cluster.name}: {doing} answered {exc.status}: {message}",
    )


def impersonation_headers(bearer: str, identity: Identity) -> dict[str, list[str]]:
    """The gateway's own credentials plus who it acts as."""
    headers: dict[str, list[str]] = {
        "Authorization": [bearer],
        "Impersonate-User": [identity.user],
    }
    if identity.groups:
        headers["Impersonate-Group"] = list(identity.groups)
    return headers
