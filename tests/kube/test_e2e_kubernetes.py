"""Opt-in: Kubernetes routes and provisioned terminals against a real cluster.

Runs only when ``TERMINAL_PROXY_E2E_KUBECONFIG`` names a kubeconfig whose credentials may
do what docs/kubernetes.md lists for the gateway, plus create and delete RoleBindings (the
test grants its user ``edit`` in the namespace and removes it afterwards). Optional:
``TERMINAL_PROXY_E2E_NAMESPACE`` (default ``default``), ``TERMINAL_PROXY_E2E_IMAGE`` (a
terminal image with ``sh``; default ``busybox:1.36``). A kind or k3d cluster will do::

    TERMINAL_PROXY_E2E_KUBECONFIG=~/.kube/config .venv/bin/pytest tests/kube/test_e2e_kubernetes.py
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from terminal_proxy.app import GATEWAY
from terminal_proxy.authorization.provision import ProvisionAuthorizer
from terminal_proxy.authorization.routing import RoutingAuthorizer
from terminal_proxy.config import load_config
from tests.kube.setup import USER_HEADER, start_gateway
from tests.support.termclient import open_term

KUBECONFIG = os.environ.get("TERMINAL_PROXY_E2E_KUBECONFIG", "")
NAMESPACE = os.environ.get("TERMINAL_PROXY_E2E_NAMESPACE", "default")
IMAGE = os.environ.get("TERMINAL_PROXY_E2E_IMAGE", "busybox:1.36")

pytestmark = pytest.mark.skipif(
    not KUBECONFIG,
    reason="opt-in: set TERMINAL_PROXY_E2E_KUBECONFIG to run against a real cluster "
    "(docs/kubernetes.md)",
)


@pytest.fixture
async def e2e_user() -> AsyncIterator[str]:
    """A fresh user name, given ``edit`` in the namespace for the test's duration."""
    user = f"terminal-proxy-e2e-{secrets.token_hex(3)}"
    api = await k8s_config.new_client_from_config(config_file=KUBECONFIG)
    rbac = k8s.RbacAuthorizationV1Api(api)
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    await rbac.create_namespaced_role_binding(NAMESPACE, binding)
    try:
        yield user
    finally:
        await rbac.delete_namespaced_role_binding(user, NAMESPACE)
        await api.close()


def _config(tmp_path: Path) -> Any:
    doc = {
        "listen": "127.0.0.1:0",
        "routes": [
            {"name": "k8s", "kind": "kubernetes"},
            {"name": "provision", "kind": "kubernetes-provision"},
        ],
        "authorization": {"poll_interval": "10s"},
        "kubernetes": {
            "clusters": [{"name": "e2e", "kubeconfig": KUBECONFIG}],
            "identity": {"user_header": USER_HEADER, "trusted_proxies": ["127.0.0.1/32"]},
            "provision": {
                "image": IMAGE,
                "command": ["sleep", "86400"],
                "role_name": "view",
                "ready_timeout": "3m",
            },
        },
    }
    return load_config(yaml.safe_dump(doc))


async def test_provisioned_terminal_on_a_real_cluster(e2e_user: str, tmp_path: Path) -> None:
    """Provision, type into the terminal as the user, reach the same pod through the
    kubernetes route, then a sweep at expiry deletes everything."""
    async with start_gateway(_config(tmp_path)) as server, aiohttp.ClientSession() as browser:
        headers = {USER_HEADER: e2e_user}
        url = server.make_url(f"/k8s-terminal/e2e/{NAMESPACE}/terminal.ws")
        term = await open_term(browser, str(url), "v4.channel.k8s.io", headers=headers)
        await term.send_stdin(b"echo e2e-$((40+2))\n")
        await term.read_until(b"e2e-42")
        await term.ws.close()

        routing = server.app[GATEWAY].services().authorizer
        assert isinstance(routing, RoutingAuthorizer)
        provisioner = routing.authorizer_for_kind("kubernetes-provision")
        assert isinstance(provisioner, ProvisionAuthorizer)
        cluster = provisioner.clusters["e2e"]
        core = k8s.CoreV1Api(cluster.api)
        listed = await core.list_namespaced_pod(
            NAMESPACE,
            label_selector="terminal-proxy.dev/user-hash,app.kubernetes.io/managed-by=terminal-proxy",
        )
        names = [pod.metadata.name for pod in listed.items]
        assert len(names) >= 1
        direct = server.make_url(f"/k8s/e2e/{NAMESPACE}/{names[0]}/terminal/terminal.ws")
        term = await open_term(browser, str(direct), "v4.channel.k8s.io", headers=headers)
        await term.send_stdin(b"echo direct-$((1+1))\n")
        await term.read_until(b"direct-2")
        await term.ws.close()

        provisioner.terminals.clock = lambda: 2**40  # far past every expiry
        deleted = await provisioner.terminals.sweep(cluster)
        assert {f"{NAMESPACE}/{name}" for name in names} <= set(deleted)
