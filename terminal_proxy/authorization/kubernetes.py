"""The Kubernetes authorizer: the cluster itself decides, as the user.

For ``kind: kubernetes`` routes (``/k8s/<cluster>/<namespace>/<pod>/<container>/terminal.ws``)
there is no external authorization API. The user comes from a trusted source in front of
the gateway (an authenticating proxy's header, believed only from configured networks, or
a bearer JWT verified against configured public keys); a SubjectAccessReview asks the
cluster whether this user may ``create pods/exec`` (or ``pods/attach``) and ``get pods`` on
the target; the grant dials the cluster's exec URL with the gateway's own credentials plus
``Impersonate-User`` / ``Impersonate-Group``, so the API server applies RBAC as the user and
its audit log names them. Every re-poll re-runs the review: a revoked RoleBinding ends the
session with 4001.

Clusters come from kubeconfig files or the in-cluster service account (kubernetes_asyncio);
their API host:port is added to the upstream allowlist automatically.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from ..channel import ConnectionDetails
from ..config import (
    Config,
    HostPattern,
    KubernetesClusterConfig,
    KubernetesConfig,
    KubernetesIdentityConfig,
    RouteConfig,
)
from ..errors import AuthorizationTimeout, AuthorizationUnavailable, GatewayError
from . import BrowserRequest, Grant, PassBack

__all__ = [
    "AccessCheck",
    "Cluster",
    "ClusterError",
    "Identity",
    "IdentityVerifier",
    "KubernetesAuthorizer",
    "impersonation_headers",
    "load_clusters",
    "match_route",
    "passback",
    "review",
]

log = logging.getLogger("terminal_proxy.kubernetes")
# kubernetes_asyncio logs whole response bodies at debug level, and TokenRequest answers
# carry tokens: tokens never reach logs, whatever the configured level.
logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.INFO)

_NAMES = {
    "url": "cluster server",
    "subprotocols": "subprotocols",
    "headers": "headers",
    "ca_pem": "cluster certificate-authority",
    "max_session_time": "kubernetes.max_session_time",
}
_SUBPROTOCOLS = ["channel.k8s.io"]  # the gateway offers v5 and v4 first
# Requests to the API server (reviews, provisioning) time out after this long.
API_TIMEOUT = 10.0
_FORBIDDEN_GROUPS = frozenset({"system:masters"})


class ClusterError(Exception):
    """A cluster cannot be used (bad kubeconfig, client-certificate credentials)."""


def passback(status: int, text: str) -> PassBack:
    """A plain-text answer for the browser, before any upgrade."""
    body = text if text.endswith("\n") else text + "\n"
    return PassBack(status, (("Content-Type", "text/plain; charset=utf-8"),), body.encode())


def match_route(
    routes: Sequence[RouteConfig], path: str
) -> tuple[RouteConfig, re.Match[str]] | None:
    """The first route whose pattern matches ``path`` (the gateway's own order)."""
    for route in routes:
        found = route.pattern.search(path)
        if found is not None:
            return route, found
    return None


# Clusters -------------------------------------------------------------------------------


@dataclass
class Cluster:
    """One cluster: an API client with the gateway's credentials, and where exec goes."""

    name: str
    api: Any  # kubernetes_asyncio.client.ApiClient
    server: URL
    ca_pem: str | None

    @property
    def host_pattern(self) -> HostPattern:
        assert self.server.host is not None and self.server.port is not None
        return HostPattern.parse(f"{_bracket(self.server.host)}:{self.server.port}")

    async def bearer(self) -> str:
        """``Bearer <token>`` of the gateway (refreshed from its file or plugin as needed)."""
        configuration = self.api.configuration
        value = await configuration.get_api_key_with_prefix("BearerToken")
        if not value:
            raise ClusterError(f"cluster {self.name!r}: the credentials hold no bearer token")
        return str(value)

    def stream_url(
        self,
        verb: str,
        namespace: str,
        pod: str,
        container: str,
        command: Sequence[str],
    ) -> str:
        """The pods/exec or pods/attach URL, its query written the way kubectl writes it."""
        params: list[tuple[str, str]] = []
        if verb == "exec":
            params.extend(("command", c) for c in command)
        params.extend(
            [("container", container), ("stdin", "true"), ("stdout", "true"), ("tty", "true")]
        )
        scheme = "wss" if self.server.scheme == "https" else "ws"
        base = str(self.server.with_scheme(scheme)).rstrip("/")
        return f"{base}/api/v1/namespaces/{namespace}/pods/{pod}/{verb}?{urlencode(params)}"

    async def aclose(self) -> None:
        await self.api.close()


def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="ascii")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _load_cluster(spec: KubernetesClusterConfig) -> Cluster:
    configuration = k8s.Configuration()
    try:
        if spec.in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            await k8s_config.load_kube_config(
                config_file=spec.kubeconfig,
                context=spec.context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (k8s_config.ConfigException, OSError, ValueError) as exc:
        raise ClusterError(f"cluster {spec.name!r}: cannot load its configuration: {exc}") from exc
    server = URL(configuration.host)
    if server.scheme not in ("https", "http") or not server.host or server.port is None:
        raise ClusterError(f"cluster {spec.name!r}: server {configuration.host!r} is not usable")
    if configuration.cert_file or configuration.key_file:
        raise ClusterError(
            f"cluster {spec.name!r}: client-certificate credentials cannot be used for the exec "
            "connection; give the gateway a token (a ServiceAccount token or an exec plugin)"
        )
    if not configuration.verify_ssl:
        raise ClusterError(
            f"cluster {spec.name!r}: insecure-skip-tls-verify is not supported; give the "
            "cluster's CA (certificate-authority-data)"
        )
    ca_pem = None
    if configuration.ssl_ca_cert:
        ca_pem = _read_text(configuration.ssl_ca_cert)
    api = k8s.ApiClient(configuration=configuration)
    cluster = Cluster(spec.name, api, server, ca_pem)
    try:
        await cluster.bearer()
    except ClusterError:
        await api.close()
        raise
    return cluster


async def load_clusters(config: KubernetesConfig) -> dict[str, Cluster]:
    """Every configured cluster, or ClusterError naming the first that cannot be used."""
    clusters: dict[str, Cluster] = {}
    try:
        for spec in config.clusters:
            clusters[spec.name] = await _load_cluster(spec)
    except BaseException:
        for cluster in clusters.values():
            await cluster.aclose()
        raise
    return clusters


# Identity -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the user is, as the cluster will know them."""

    user: str
    groups: tuple[str, ...] = ()


class IdentityVerifier:
    """The user from an authenticating proxy's header or a verified bearer JWT."""

    def __init__(self, config: KubernetesIdentityConfig) -> None:
        self._config = config
        self._keys = () if config.jwt_keys_file is None else read_public_keys(config.jwt_keys_file)

    def identify(self, request: BrowserRequest) -> Identity | PassBack:
        config = self._config
        found: Identity | PassBack | None = None
        if config.user_header is not None:
            found = self._from_header(request)
        if found is None and self._keys:
            found = self._from_jwt(request)
        if found is None:
            return passback(401, "not authenticated: no trusted user identity on the request")
        if isinstance(found, PassBack):
            return found
        if found.user.startswith("system:") or _FORBIDDEN_GROUPS & set(found.groups):
            return passback(403, "system: identities cannot open terminals through the gateway")
        return found

    def _from_header(self, request: BrowserRequest) -> Identity | None:
        config = self._config
        assert config.user_header is not None
        wanted = config.user_header.lower()
        values = [v.strip() for k, v in request.headers if k.lower() == wanted]
        if not values:
            return None
        peer = request.peer or request.forwarded_for.rsplit(",", 1)[-1].strip()
        if not _in_networks(peer, config.trusted_proxies):
            log.warning(
                "ignoring %s from untrusted peer %s (not on kubernetes.identity.trusted_proxies)",
                config.user_header,
                peer or "-",
            )
            return None
        if len(values) != 1 or not values[0]:
            return None
        groups: list[str] = []
        if config.groups_header is not None:
            wanted_groups = config.groups_header.lower()
            for name, value in request.headers:
                if name.lower() == wanted_groups:
                    groups.extend(g.strip() for g in value.split(",") if g.strip())
        return self._named(values[0], groups)

    def _from_jwt(self, request: BrowserRequest) -> Identity | PassBack | None:
        config = self._config
        token = _bearer_token(request.headers) or _cookie(request.headers, config.jwt_cookie)
        if token is None:
            return None
        claims: dict[str, Any] | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=list(config.jwt_algorithms),
                    audience=config.jwt_audience,
                    issuer=config.jwt_issuer,
                    leeway=config.jwt_leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                return passback(401, f"invalid token: {_jwt_reason(exc)}")
        if claims is None:
            return passback(401, "invalid token: signature not verified by any configured key")
        user = claims.get(config.username_claim)
        if not isinstance(user, str) or not user:
            return passback(401, f"invalid token: claim {config.username_claim!r} is missing")
        raw_groups = claims.get(config.groups_claim, [])
        if not isinstance(raw_groups, list) or not all(isinstance(g, str) for g in raw_groups):
            return passback(401, f"invalid token: claim {config.groups_claim!r} is not a list")
        return self._named(user, raw_groups)

    def _named(self, user: str, groups: Sequence[str]) -> Identity:
        config = self._config
        return Identity(
            config.username_prefix + user,
            tuple(dict.fromkeys(config.groups_prefix + g for g in groups)),
        )


_PEM_KEY = re.compile(
    r"-----BEGIN (?:RSA |EC )?PUBLIC KEY-----.+?-----END (?:RSA |EC )?PUBLIC KEY-----", re.S
)


def read_public_keys(path: str) -> tuple[str, ...]:
    """The PEM public keys in ``path``; ClusterError naming the file if there are none."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ClusterError(
            f"kubernetes.identity.jwt_keys_file: cannot read {path!r}: {reason}"
        ) from None
    keys = tuple(match.group(0) for match in _PEM_KEY.finditer(text))
    if not keys:
        raise ClusterError(
            f"kubernetes.identity.jwt_keys_file: {path!r} holds no PEM public key "
            "(BEGIN PUBLIC KEY)"
        )
    return keys


def _jwt_reason(exc: Exception) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"claim {exc.claim!r} is missing"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    return "malformed"


def _bearer_token(headers: Sequence[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _cookie(headers: Sequence[tuple[str, str]], name: str | None) -> str | None:
    if name is None:
        return None
    for header, value in headers:
        if header.lower() != "cookie":
            continue
        try:
            jar = SimpleCookie(value)
        except CookieError:
            continue
        morsel = jar.get(name)
        if morsel is not None and morsel.value:
            return morsel.value
    return None


def _in_networks(address: str, networks: Sequence[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


# Reviews --------------------------------------------------------------------------------


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


def status_message(exc: ApiException) -> str:
    """The message of the Status body of an API error (never the request's headers)."""
    import json

    try:
        doc = json.loads(exc.body or b"")
    except (ValueError, TypeError):
        return str(exc.reason or "")
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])[:300]
    return str(exc.reason or "")


def impersonation_headers(bearer: str, identity: Identity) -> dict[str, list[str]]:
    """The gateway's own credentials plus who it acts as."""
    headers: dict[str, list[str]] = {
        "Authorization": [bearer],
        "Impersonate-User": [identity.user],
    }
    if identity.groups:
        headers["Impersonate-Group"] = list(identity.groups)
    return headers


# The authorizer -------------------------------------------------------------------------


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
        found = match_route(self._routes, request.path)
        if found is None or found[0].kind != "kubernetes":
            return passback(404, "not a Kubernetes terminal route")
        groups = {k: v for k, v in found[1].groupdict().items() if v is not None}
        cluster = self._clusters.get(groups["cluster"])
        if cluster is None:
            return passback(404, f"no cluster named {groups['cluster']!r} is configured")
        identity = self._identity.identify(request)
        if isinstance(identity, PassBack):
            return identity
        verb = groups.get("verb", "exec")
        if verb not in ("exec", "attach"):
            return passback(404, f"unknown verb {verb!r} (exec or attach)")
        return cluster, identity, verb, groups
