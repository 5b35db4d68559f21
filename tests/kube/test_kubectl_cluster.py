"""Real kubectl v1.36.3 against the fake cluster: auth can-i (SelfSubjectAccessReview,
with and without --as impersonation), get, label selectors, delete with garbage
collection. Never skips: kubectl comes from scripts/fetch-kubectl."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.kube_cluster import FakeCluster, FakeRbac
from tests.fakes.kubectl import Kubectl
from tests.kube.setup import GATEWAY_USER, ClusterKube

pytestmark = pytest.mark.kubectl


@pytest.fixture
def rbac() -> FakeRbac:
    rbac = FakeRbac()
    rbac.allow(GATEWAY_USER, ["impersonate"], ["users", "groups"])
    rbac.allow(GATEWAY_USER, ["*"], ["*"], groups=["*"], namespaces=["default"])
    rbac.allow("alice", ["create"], ["pods/exec"], namespaces=["default"])
    rbac.allow("group:devs", ["get"], ["pods"], namespaces=["default"])
    return rbac


@pytest.fixture
async def ckube(rbac: FakeRbac) -> AsyncIterator[ClusterKube]:
    async with ClusterKube(FakeCluster(rbac)) as server:
        yield server


@pytest.fixture
def kubectl(kubectl_binary: Path, ckube: ClusterKube, tmp_path: Path) -> Kubectl:
    return Kubectl.for_server(
        kubectl_binary, tmp_path, ckube.url, ca_pem=ckube.ca_pem, token=ckube.token
    )


@pytest.mark.parametrize(
    ("args", "answer"),
    [
        (["create", "pods", "--subresource", "exec", "--as", "alice"], "yes"),
        (["get", "pods", "--as", "alice"], "no"),
        (["get", "pods", "--as", "alice", "--as-group", "devs"], "yes"),
        (["create", "pods", "--subresource", "exec", "--as", "bob"], "no"),
        (["create", "pods", "--subresource", "exec", "-n", "other", "--as", "alice"], "no"),
        (["delete", "pods"], "yes"),
    ],
)
async def test_auth_can_i(
    kubectl: Kubectl, ckube: ClusterKube, args: list[str], answer: str
) -> None:
    """kubectl sends a SelfSubjectAccessReview, impersonating with --as/--as-group."""
    result = await kubectl.run("auth", "can-i", *args)
    assert result.out.strip() == answer, result
    assert result.returncode == (0 if answer == "yes" else 1), result
    posted = ckube.requests_to("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
    assert posted and posted[-1].method == "POST"
    if "--as" in args:
        assert posted[-1].headers["Impersonate-User"] == args[args.index("--as") + 1]


async def test_impersonation_refused_without_permission(
    kubectl_binary: Path, tmp_path: Path
) -> None:
    """A requester without 'impersonate' gets the API server's 403, which kubectl prints."""
    async with ClusterKube(FakeCluster(FakeRbac())) as ckube:
        kubectl = Kubectl.for_server(
            kubectl_binary, tmp_path, ckube.url, ca_pem=ckube.ca_pem, token=ckube.token
        )
        result = await kubectl.run("auth", "can-i", "get", "pods", "--as", "alice")
    assert result.returncode != 0
    assert f'User "{GATEWAY_USER}" cannot impersonate resource "users"' in result.err, result


async def test_get_list_and_delete_with_garbage_collection(
    kubectl: Kubectl, ckube: ClusterKube
) -> None:
    """Objects made through the API are listed by kubectl (label selector), and deleting the
    owner with kubectl deletes what it owns. (--validate=false: the fake serves no OpenAPI
    documents for client-side validation.)"""
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "parent", "labels": {"app": "t"}},
            },
        ],
    }
    result = await kubectl.run(
        "create", "--validate=false", "-f", "-", stdin=json.dumps(manifest).encode()
    )
    assert result.returncode == 0, result
    parent = ckube.fake.named("serviceaccounts", "default")[0]
    child = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "child",
            "labels": {"app": "t"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "name": "parent",
                    "uid": parent["metadata"]["uid"],
                }
            ],
        },
        "stringData": {"x": "y"},
    }
    result = await kubectl.run(
        "create", "--validate=false", "-f", "-", stdin=json.dumps(child).encode()
    )
    assert result.returncode == 0, result
    result = await kubectl.run("get", "serviceaccounts,secrets", "-l", "app=t", "-o", "name")
    assert result.out.split() == ["serviceaccount/parent", "secret/child"], result
    result = await kubectl.run("get", "secrets", "-l", "app=other", "-o", "name")
    assert (result.returncode, result.out.strip()) == (0, ""), result
    result = await kubectl.run("delete", "serviceaccount", "parent")
    assert result.returncode == 0, result
    assert 'serviceaccount "parent" deleted' in result.out
    result = await kubectl.run("get", "secret", "child")
    assert result.returncode == 1
    assert 'secrets "child" not found' in result.err, result


async def test_get_nodes(kubectl: Kubectl, ckube: ClusterKube) -> None:
    """Nodes (cluster-scoped, what node-debug terminals check) as kubectl reads them."""
    ckube.fake.add_node("node-1")
    result = await kubectl.run("get", "nodes", "-o", "name")
    assert result.returncode == 1, result
    assert 'User "' + GATEWAY_USER + '" cannot list resource "nodes"' in result.err, result
    assert "at the cluster scope" in result.err, result
    ckube.fake.rbac.allow(GATEWAY_USER, ["get", "list"], ["nodes"])
    result = await kubectl.run("get", "nodes", "-o", "name")
    assert (result.returncode, result.out.split()) == (0, ["node/node-1"]), result
    result = await kubectl.run("get", "node", "node-1", "-o", "jsonpath={.metadata.name}")
    assert (result.returncode, result.out) == (0, "node-1"), result
    result = await kubectl.run("get", "node", "node-9")
    assert result.returncode == 1
    assert 'nodes "node-9" not found' in result.err, result
