"""Node-debug terminals (``kind: kubernetes-node-debug``) against the fake cluster: only
admin groups get one, with exactly the host settings of ``kubectl debug node``, pinned to
the node and owned by the parent; everyone else, an unknown node or a namespace whose Pod
Security forbids it gets a clear status and nothing is left behind; cleanup is the same
as for every terminal."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from terminal_proxy.authorization.provision import ProvisionAuthorizer
from terminal_proxy.config import ConfigError, load_config
from tests.fakes.kube_cluster import FakeCluster, FakeRbac, Rule
from tests.kube.setup import (
    GATEWAY_USER,
    GROUPS_HEADER,
    TERMINAL_VIEW,
    USER_HEADER,
    ClusterKube,
    cluster_of,
    gateway_rbac,
    provision_gateway,
    provisioner,
)
from tests.support.termclient import open_term, raw_handshake

NODE = "node-1"
PATH = f"/k8s-node-debug/dev/team-a/{NODE}/terminal.ws"
TERMINAL_PATH = "/k8s-terminal/dev/team-a/terminal.ws"
IMAGE = "registry.example/tools:1"
DEBUG_IMAGE = "registry.example/node-debug:1"
ADMINS = "sre"
KINDS = ("serviceaccounts", "rolebindings", "secrets", "networkpolicies", "pods")
ROUTES = [
    {"name": "terminal", "kind": "kubernetes-provision"},
    {"name": "node-debug", "kind": "kubernetes-node-debug"},
]
PROVISION = {
    "image": IMAGE,
    "role_name": TERMINAL_VIEW,
    "api_server_cidrs": ["10.0.0.1/32"],
    "heartbeat_timeout": "5m",
    "expiry": "30m",
    "cleanup_interval": "1h",
    "ready_timeout": "5s",
    "node_debug": {"admin_groups": [ADMINS, "platform"], "image": DEBUG_IMAGE},
}
PROTOCOL = "v4.channel.k8s.io"


def _as(user: str, *groups: str) -> dict[str, str]:
    headers = {USER_HEADER: user}
    if groups:
        headers[GROUPS_HEADER] = ",".join(groups)
    return headers


@pytest.fixture
def rbac() -> FakeRbac:
    rbac = FakeRbac()
    gateway_rbac(rbac, node_debug=True)
    # alice and bob may both create pods and exec in team-a; only alice is in "sre".
    for user in ("alice", "bob"):
        rbac.allow(user, ["create"], ["pods", "pods/exec"], namespaces=["team-a"])
    rbac.cluster_roles[TERMINAL_VIEW] = [
        Rule(frozenset({"get", "list", "watch"}), frozenset({"pods", "configmaps"}))
    ]
    return rbac


@pytest.fixture
def fake(rbac: FakeRbac) -> FakeCluster:
    cluster = FakeCluster(rbac)
    cluster.add_node(NODE)
    cluster.add_node("node-2")
    return cluster


@pytest.fixture
async def ckube(fake: FakeCluster) -> AsyncIterator[ClusterKube]:
    async with ClusterKube(fake) as server:
        yield server


def _gateway(
    ckube: ClusterKube, tmp_path: Path, provision: dict[str, Any] | None = None, **extra: Any
) -> contextlib.AbstractAsyncContextManager[TestServer]:
    return provision_gateway(ckube, tmp_path, ROUTES, {**PROVISION, **(provision or {})}, **extra)


@pytest.fixture
async def gateway(ckube: ClusterKube, tmp_path: Path) -> AsyncIterator[TestServer]:
    async with _gateway(ckube, tmp_path) as server:
        yield server


def _provisioner(server: TestServer) -> ProvisionAuthorizer:
    found = provisioner(server, "kubernetes-node-debug")
    # One provisioner (and one cleanup loop) serves both provisioning kinds.
    assert provisioner(server, "kubernetes-provision") is found
    return found


def _namespaced(fake: FakeCluster) -> dict[str, list[dict[str, Any]]]:
    return {kind: fake.named(kind, "team-a") for kind in KINDS}


def _only_nodes(fake: FakeCluster) -> bool:
    """Nothing in the cluster but the nodes the test set up."""
    return {key[1] for key in fake.objects} == {"nodes"}


def _writes(ckube: ClusterKube) -> list[str]:
    """Every request of the gateway that could have created or changed something."""
    return [
        f"{r.method} {r.path}"
        for r in ckube.requests
        if r.method in ("POST", "PUT", "PATCH", "DELETE")
        and not r.path.endswith("/subjectaccessreviews")
    ]


async def test_admin_gets_a_privileged_pod_on_the_node(
    gateway: TestServer, ckube: ClusterKube, fake: FakeCluster, browser: aiohttp.ClientSession
) -> None:
    term = await open_term(
        browser, str(gateway.make_url(PATH)), PROTOCOL, headers=_as("alice", ADMINS)
    )
    session = await ckube.next_session()
    objects = _namespaced(fake)
    # The parent and the pod; no RoleBinding, token, kubeconfig or NetworkPolicy.
    assert {kind: len(items) for kind, items in objects.items()} == {
        "serviceaccounts": 1,
        "rolebindings": 0,
        "secrets": 0,
        "networkpolicies": 0,
        "pods": 1,
    }
    (parent,) = objects["serviceaccounts"]
    (pod,) = objects["pods"]
    name = parent["metadata"]["name"]
    assert (session.user, session.pod, session.container, session.command) == (
        "alice",
        name,
        "terminal",
        ["sh"],
    )
    assert session.headers.getall("Impersonate-Group") == [ADMINS]
    assert parent["automountServiceAccountToken"] is False
    annotations = parent["metadata"]["annotations"]
    assert annotations["terminal-proxy.dev/user"] == "alice"
    assert annotations["terminal-proxy.dev/node"] == NODE
    labels = parent["metadata"]["labels"]
    assert labels["terminal-proxy.dev/variant"] == "node-debug"
    assert labels["app.kubernetes.io/managed-by"] == "terminal-proxy"
    # Owned by the parent: one delete removes the session.
    assert pod["metadata"]["labels"] == labels
    (owner,) = pod["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "ServiceAccount",
        name,
        parent["metadata"]["uid"],
    )
    spec = pod["spec"]
    # Exactly what kubectl debug node/<node> --profile=sysadmin asks for.
    assert spec["nodeName"] == NODE
    assert (spec["hostPID"], spec["hostNetwork"], spec["hostIPC"]) == (True, True, True)
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["volumes"] == [{"name": "host-root", "hostPath": {"path": "/"}}]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == name
    assert spec["activeDeadlineSeconds"] == 7200 + 60  # max_expiry: the ceiling of extensions
    assert "securityContext" not in spec  # no runAsNonRoot: root on the node is the point
    (container,) = spec["containers"]
    assert container["image"] == DEBUG_IMAGE
    assert container["volumeMounts"] == [{"name": "host-root", "mountPath": "/host"}]
    assert container["securityContext"] == {"privileged": True}
    assert "env" not in container  # no kubeconfig
    # The reviews asked whether alice may create pods and pods/exec in team-a.
    asked = {
        (spec["user"], r["verb"], r["resource"], r.get("subresource", ""), r["namespace"])
        for spec, allowed in fake.reviews
        if allowed
        for r in [spec["resourceAttributes"]]
    }
    assert asked == {
        ("alice", "create", "pods", "", "team-a"),
        ("alice", "create", "pods", "exec", "team-a"),
    }
    # The node was checked with the gateway's own credentials.
    (node_get,) = ckube.requests_to(f"/api/v1/nodes/{NODE}")
    assert (node_get.method, node_get.user, node_get.status) == ("GET", GATEWAY_USER, 200)
    await term.ws.close()


async def test_reconnect_reuses_the_node_debug_pod_and_variants_stay_apart(
    gateway: TestServer, ckube: ClusterKube, fake: FakeCluster, browser: aiohttp.ClientSession
) -> None:
    """A reload reconnects to the same node-debug pod; the normal terminal, and another
    node's, are separate pods (a normal route never lands in a privileged pod)."""
    pods = []
    for path in (PATH, PATH, TERMINAL_PATH, PATH.replace(NODE, "node-2"), TERMINAL_PATH):
        term = await open_term(
            browser, str(gateway.make_url(path)), PROTOCOL, headers=_as("alice", ADMINS)
        )
        pods.append((await ckube.next_session()).pod)
        await term.ws.close()
    assert pods[0] == pods[1] and pods[2] == pods[4]
    assert len(set(pods)) == 3
    by_name = {p["metadata"]["name"]: p["spec"] for p in fake.named("pods", "team-a")}
    assert by_name[pods[0]]["nodeName"] == NODE
    assert by_name[pods[3]]["nodeName"] == "node-2"
    assert "hostPID" not in by_name[pods[2]]
    assert by_name[pods[2]]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize(
    ("headers", "admin_groups", "text"),
    [
        (
            _as("bob", "devs"),
            None,
            "user 'bob' may not open a node-debug terminal on node node-1: not a member of "
            "an admin group (kubernetes.provision.node_debug.admin_groups)",
        ),
        (_as("bob"), None, "user 'bob' may not open a node-debug terminal"),
        (
            _as("alice", ADMINS),
            [],
            "node-debug terminals are disabled on this gateway "
            "(kubernetes.provision.node_debug.admin_groups is empty)",
        ),
    ],
)
async def test_non_admin_gets_403_and_nothing_is_created(
    ckube: ClusterKube,
    fake: FakeCluster,
    tmp_path: Path,
    browser: aiohttp.ClientSession,
    headers: dict[str, str],
    admin_groups: list[str] | None,
    text: str,
) -> None:
    """bob may create pods and exec in team-a, but is in no admin group: refused before
    any request to the cluster (not even a review)."""
    provision = None
    if admin_groups is not None:
        provision = {"node_debug": {"admin_groups": admin_groups}}
    async with _gateway(ckube, tmp_path, provision) as server:
        status, body, _ = await raw_handshake(
            browser, str(server.make_url(PATH)), protocols=PROTOCOL, headers=headers
        )
    assert status == 403, body
    assert body.startswith(text)
    assert ADMINS not in body  # the admin groups are not disclosed
    assert _only_nodes(fake)
    assert _namespaced(fake) == {kind: [] for kind in KINDS}
    assert not fake.reviews
    assert _writes(ckube) == []
    assert not ckube.requests_to("/api/v1/nodes")


async def test_admin_who_may_not_create_pods_gets_403(
    ckube: ClusterKube,
    rbac: FakeRbac,
    fake: FakeCluster,
    tmp_path: Path,
    browser: aiohttp.ClientSession,
) -> None:
    """Membership of an admin group is not enough: the cluster must also let the user
    create pods in the namespace (as kubectl debug node would need)."""
    rbac.grants = [(s, r) for s, r in rbac.grants if s != "alice"]
    rbac.allow("alice", ["create"], ["pods/exec"], namespaces=["team-a"])
    async with _gateway(ckube, tmp_path) as server:
        status, body, _ = await raw_handshake(
            browser, str(server.make_url(PATH)), protocols=PROTOCOL, headers=_as("alice", ADMINS)
        )
        assert status == 403, body
        assert "user 'alice' may not create pods on namespace team-a in cluster 'dev'" in body
        # The normal terminal (pods/exec only) is still hers.
        term = await open_term(
            browser, str(server.make_url(TERMINAL_PATH)), PROTOCOL, headers=_as("alice", ADMINS)
        )
        await ckube.next_session()
        await term.ws.close()
    assert [p["spec"].get("hostPID") for p in fake.named("pods", "team-a")] == [None]


async def test_unknown_node_gets_404_and_nothing_is_left(
    gateway: TestServer, ckube: ClusterKube, fake: FakeCluster, browser: aiohttp.ClientSession
) -> None:
    status, body, _ = await raw_handshake(
        browser,
        str(gateway.make_url(PATH.replace(NODE, "node-9"))),
        protocols=PROTOCOL,
        headers=_as("alice", ADMINS),
    )
    assert status == 404, body
    assert body == "node node-9 not found in cluster dev\n"
    assert _only_nodes(fake)
    assert _writes(ckube) == []


async def test_gateway_without_node_permission_fails_clearly(
    ckube: ClusterKube,
    rbac: FakeRbac,
    fake: FakeCluster,
    tmp_path: Path,
    browser: aiohttp.ClientSession,
) -> None:
    rbac.grants = [(s, r) for s, r in rbac.grants if "nodes" not in r.resources]
    async with _gateway(ckube, tmp_path) as server:
        status, body, _ = await raw_handshake(
            browser, str(server.make_url(PATH)), protocols=PROTOCOL, headers=_as("alice", ADMINS)
        )
    assert status == 502, body
    assert body.startswith("the gateway may not get nodes in cluster dev (check its RBAC)")
    assert "\nrequest id: " in body  # the gateway's error, not an answer about the user
    assert _only_nodes(fake)


async def test_pod_security_refusal_is_clear_and_rolled_back(
    ckube: ClusterKube, fake: FakeCluster, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    """A namespace enforcing Pod Security "baseline" refuses the privileged pod after the
    parent exists: a 403 naming the violations, and the parent is deleted again."""
    fake.pod_security_baseline.add("team-a")
    async with _gateway(ckube, tmp_path) as server:
        status, body, _ = await raw_handshake(
            browser, str(server.make_url(PATH)), protocols=PROTOCOL, headers=_as("alice", ADMINS)
        )
    assert status == 403, body
    assert body.startswith(
        "namespace team-a's Pod Security admission refuses the terminal pod: pods \"terminal-"
    )
    assert "host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)" in body
    assert 'hostPath volumes (volume "host-root")' in body
    created = [
        r
        for r in ckube.requests
        if r.method == "POST" and r.path.endswith("/serviceaccounts") and r.status == 201
    ]
    assert len(created) == 1
    assert _only_nodes(fake)


async def test_not_ready_in_time_leaves_nothing(
    ckube: ClusterKube, fake: FakeCluster, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    fake.pending_images.add(DEBUG_IMAGE)
    async with _gateway(ckube, tmp_path, {"ready_timeout": "1s"}) as server:
        status, body, _ = await raw_handshake(
            browser, str(server.make_url(PATH)), protocols=PROTOCOL, headers=_as("alice", ADMINS)
        )
    assert status == 504, body
    assert _only_nodes(fake)


async def test_heartbeat_cleanup_and_revocation(
    ckube: ClusterKube,
    rbac: FakeRbac,
    fake: FakeCluster,
    tmp_path: Path,
    browser: aiohttp.ClientSession,
) -> None:
    """Re-polls heartbeat the node-debug parent and re-run its reviews (taking away
    ``create pods`` ends the session with 4001); silence lets the sweep delete it, pod
    included, like every terminal."""
    async with _gateway(
        ckube, tmp_path, authorization={"poll_interval": "200ms", "poll_jitter": 0}
    ) as server:
        prov = _provisioner(server)
        now = [1_000_000.0]
        prov.terminals.clock = lambda: now[0]
        term = await open_term(
            browser, str(server.make_url(PATH)), PROTOCOL, headers=_as("alice", ADMINS)
        )
        session = await ckube.next_session()
        (parent,) = fake.named("serviceaccounts", "team-a")
        name = parent["metadata"]["name"]

        def heartbeat() -> float:
            obj = fake.objects[("", "serviceaccounts", "team-a", name)]
            return float(obj["metadata"]["annotations"]["terminal-proxy.dev/heartbeat"])

        now[0] += 240
        await fake.wait_for(lambda: heartbeat() == now[0])
        cluster = cluster_of(server)
        assert await prov.terminals.sweep(cluster) == []
        # Revocation mid-session: alice may still exec, but no longer create pods.
        rbac.grants = [(s, r) for s, r in rbac.grants if s != "alice"]
        rbac.allow("alice", ["create"], ["pods/exec"], namespaces=["team-a"])
        code, reason = await term.wait_closed()
        assert (code, reason) == (4001, "authorization revoked")
        await session.wait_closed()
        now[0] += 301
        assert await prov.terminals.sweep(cluster) == [f"team-a/{name}"]
        assert _namespaced(fake) == {kind: [] for kind in KINDS}
        assert _only_nodes(fake)


async def test_expired_node_debug_terminal_is_cleaned_up_by_the_loop(
    ckube: ClusterKube, fake: FakeCluster, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    """The gateway's own cleanup loop (not a call of ours) deletes it at expiry."""
    async with _gateway(ckube, tmp_path, {"cleanup_interval": "100ms"}) as server:
        prov = _provisioner(server)
        now = [1_000_000.0]
        prov.terminals.clock = lambda: now[0]
        term = await open_term(
            browser, str(server.make_url(PATH)), PROTOCOL, headers=_as("alice", ADMINS)
        )
        await ckube.next_session()
        await term.ws.close()
        assert len(fake.named("pods", "team-a")) == 1
        now[0] += 1800
        await fake.wait_for(lambda: _only_nodes(fake))


# Configuration ---------------------------------------------------------------------------


def _load(routes: list[dict[str, Any]], provision: dict[str, Any]) -> Any:
    import yaml

    doc = {
        "routes": routes,
        "kubernetes": {
            "clusters": [{"name": "dev", "in_cluster": True}],
            "identity": {"user_header": USER_HEADER, "trusted_proxies": ["127.0.0.1/32"]},
            "provision": provision,
        },
    }
    return load_config(yaml.safe_dump(doc))


def test_node_debug_route_defaults() -> None:
    config = _load(
        [{"name": "nd", "kind": "kubernetes-node-debug"}],
        {"node_debug": {"admin_groups": ["sre"], "image": DEBUG_IMAGE}},
    )
    (route,) = config.routes
    found = route.pattern.search("/k8s-node-debug/dev/team-a/ip-10-0-0-1.ec2.internal/terminal.ws")
    assert found is not None and found.group("node") == "ip-10-0-0-1.ec2.internal"
    assert config.kubernetes.provision.node_debug.admin_groups == ("sre",)
    # provision.image is not needed when node_debug.image is set.
    assert config.kubernetes.provision.image is None


@pytest.mark.parametrize(
    ("routes", "provision", "message"),
    [
        (
            [{"name": "nd", "kind": "kubernetes-node-debug"}],
            {"node_debug": {"admin_groups": ["sre"]}},
            "kubernetes.provision.node_debug.image: node-debug routes need an image",
        ),
        (
            [
                {
                    "name": "nd",
                    "kind": "kubernetes-node-debug",
                    "pattern": r"^/nd/(?P<cluster>[a-z]+)/(?P<namespace>[a-z]+)\Z",
                }
            ],
            {"image": IMAGE},
            "a kubernetes-node-debug route needs the named groups (?P<node>...)",
        ),
        (
            [{"name": "nd", "kind": "kubernetes-node-debug"}],
            {"image": IMAGE, "node_debug": {"admin_groups": ["system:authenticated"]}},
            "invalid admin group 'system:authenticated'",
        ),
        (
            [{"name": "nd", "kind": "kubernetes-node-debug"}],
            {"image": IMAGE, "node_debug": {"admins": ["sre"]}},
            "kubernetes.provision.node_debug.admins",
        ),
    ],
)
def test_node_debug_config_problems(
    routes: list[dict[str, Any]], provision: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(routes, provision)
    assert message in str(info.value)
