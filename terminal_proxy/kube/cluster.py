"""The clusters: an API client with the gateway's own credentials per configured cluster.

Clusters come from kubeconfig files or the in-cluster service account (kubernetes_asyncio);
their API host:port is added to the upstream allowlist by the authorizer factory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from ..config import HostPattern, KubernetesClusterConfig, KubernetesConfig

__all__ = [
    "API_TIMEOUT",
    "Cluster",
    "ClusterError",
    "load_clusters",
    "status_message",
]

# kubernetes_asyncio logs whole response bodies at debug level, and TokenRequest answers
# carry tokens: tokens never reach logs, whatever the configured level.
logging.getLogger("kubernetes_asyncio.client.rest").setLevel(logging.INFO)

# Requests to the API server (reviews, provisioning) time out after this long.
API_TIMEOUT = 10.0


class ClusterError(Exception):
    """A cluster cannot be used (bad kubeconfig, client-certificate credentials)."""


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


def status_message(exc: ApiException) -> str:
    """The message of the Status body of an API error (never the request's headers)."""
    try:
        doc = json.loads(exc.body or b"")
    except (ValueError, TypeError):
        return str(exc.reason or "")
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])[:300]
    return str(exc.reason or "")
