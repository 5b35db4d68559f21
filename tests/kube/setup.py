"""A fake cluster with RBAC behind the fake kube-apiserver, and a gateway configured for
its Kubernetes routes (kubeconfig written to a scratch directory)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestServer

from terminal_proxy.app import GATEWAY, build_app
from terminal_proxy.authorization.provision import ProvisionAuthorizer
from terminal_proxy.authorization.routing import RoutingAuthorizer
from terminal_proxy.config import Config, load_config
from terminal_proxy.kube.cluster import Cluster
from tests.fakes.kube_apiserver import FakeKubeApiServer
from tests.fakes.kube_cluster import FakeCluster, FakeRbac
from tests.fakes.kubectl import write_kubeconfig
from tests.support.logcapture import remember_secret

GATEWAY_USER = "system:serviceaccount:terminal-proxy:gateway"
USER_HEADER = "X-Forwarded-User"
GROUPS_HEADER = "X-Forwarded-Groups"
TERMINAL_VIEW = "terminal-view"


RBAC_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "rbac"


def shipped_rules(component: str) -> list[dict[str, Any]]:
    """The rules of the ClusterRole in deploy/kubernetes/rbac/<component>/rbac.yaml."""
    docs = yaml.safe_load_all((RBAC_DIR / component / "rbac.yaml").read_text())
    (role,) = (doc for doc in docs if doc and doc["kind"] == "ClusterRole")
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def gateway_rbac(rbac: FakeRbac, *, provision: bool = False, node_debug: bool = False) -> None:
    """Exactly the rules deploy/kubernetes/rbac/ ships (and docs/kubernetes.md shows): a
    missing rule there fails the tests that use this. Node-debug routes: the provision
    rules and reading nodes. The bind rule names ``view``, the shipped config's
    provision.role_name; the tests' role is TERMINAL_VIEW."""
    components = ["kubernetes-native"]
    if provision or node_debug:
        components.append("provisioned-terminals")
    if node_debug:
        components.append("node-debug")
    for component in components:
        for rule in shipped_rules(component):
            names = rule.get("resourceNames")
            rbac.allow(
                GATEWAY_USER,
                rule["verbs"],
                rule["resources"],
                groups=rule["apiGroups"],
                names=None
                if names is None
                else [TERMINAL_VIEW if n == "view" else n for n in names],
            )


class ClusterKube(FakeKubeApiServer):
    """The fake kube-apiserver with a cluster; ``token`` is the gateway's."""

    def __init__(self, cluster: FakeCluster, **kwargs: Any) -> None:
        self.token = secrets.token_urlsafe(18)
        remember_secret(self.token)
        super().__init__(tokens={self.token: GATEWAY_USER}, cluster=cluster, **kwargs)
        self.fake = cluster

    async def __aenter__(self) -> ClusterKube:
        await self.start()
        return self


def kube_config(
    kube: FakeKubeApiServer,
    token: str,
    directory: Path,
    overrides: dict[str, Any] | None = None,
    *,
    routes: list[dict[str, Any]] | None = None,
) -> Config:
    kubeconfig = write_kubeconfig(
        directory / "kubeconfig", kube.url, ca_pem=kube.ca_pem, token=token
    )
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "routes": routes or [{"name": "k8s", "kind": "kubernetes"}],
        "authorization": {"poll_interval": "60s", "poll_jitter": 0},
        "upstream": {"dial_timeout": "5s"},
        "session": {"shutdown_grace": 0, "close_timeout": "2s"},
        "kubernetes": {
            "clusters": [{"name": "dev", "kubeconfig": str(kubeconfig)}],
            "identity": {
                "user_header": USER_HEADER,
                "groups_header": GROUPS_HEADER,
                "trusted_proxies": ["127.0.0.1/32"],
            },
        },
    }
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return load_config(yaml.safe_dump(doc))


@contextlib.asynccontextmanager
async def start_gateway(config: Config) -> AsyncIterator[TestServer]:
    server = TestServer(build_app(config), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def provision_config(
    ckube: ClusterKube,
    directory: Path,
    routes: list[dict[str, Any]],
    provision: dict[str, Any],
    **extra: Any,
) -> Config:
    """A gateway config for provisioned terminals on ``ckube``'s cluster ``dev``."""
    overrides = {"kubernetes": {"provision": provision}, **extra}
    return kube_config(ckube, ckube.token, directory, overrides, routes=routes)


def provisioner(server: TestServer, kind: str = "kubernetes-provision") -> ProvisionAuthorizer:
    """The gateway's provisioner (one serves both provisioning kinds)."""
    routing = server.app[GATEWAY].services().authorizer
    assert isinstance(routing, RoutingAuthorizer)
    found = routing.authorizer_for_kind(kind)
    assert isinstance(found, ProvisionAuthorizer)
    return found


def cluster_of(server: TestServer, name: str = "dev") -> Cluster:
    """The provisioner's client for cluster ``name``."""
    return provisioner(server).clusters[name]


def provision_gateway(
    ckube: ClusterKube,
    directory: Path,
    routes: list[dict[str, Any]],
    provision: dict[str, Any],
    **extra: Any,
) -> contextlib.AbstractAsyncContextManager[TestServer]:
    """A running gateway with ``provision_config``."""
    return start_gateway(provision_config(ckube, directory, routes, provision, **extra))
