"""Provisioned terminals against the fake cluster: exactly the expected objects with least
privilege, reuse on reconnect, heartbeat and silence, expiry, a restarted gateway still
cleaning up, rollback of half-created terminals, and clear errors before the upgrade."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import terminal_proxy.authorization.provision.lifecycle as lifecycle
from terminal_proxy.app import GATEWAY
from terminal_proxy.protocols import TERMINAL_PROXY, ExpiryWarning
from tests.fakes.kube_cluster import FakeCluster, FakeRbac, Rule
from tests.kube.setup import (
    GATEWAY_USER,
    TERMINAL_VIEW,
    USER_HEADER,
    ClusterKube,
    cluster_of,
    gateway_rbac,
    provision_config,
    provision_gateway,
    provisioner,
    start_gateway,
)
from tests.support.logcapture import remember_secret
from tests.support.termclient import open_term, raw_handshake, wait_hello

PATH = "/k8s-terminal/dev/team-a/terminal.ws"
IMAGE = "registry.example/tools:1"
KINDS = ("serviceaccounts", "rolebindings", "secrets", "networkpolicies", "pods")
ROUTES = [{"name": "provision", "kind": "kubernetes-provision"}]
PROVISION = {
    "image": IMAGE,
    "role_name": TERMINAL_VIEW,
    "api_server_cidrs": ["10.0.0.1/32"],
    "heartbeat_timeout": "5m",
    "expiry": "30m",
    "cleanup_interval": "1h",
    "ready_timeout": "5s",
}


@pytest.fixture
def rbac() -> FakeRbac:
    rbac = FakeRbac()
    gateway_rbac(rbac, provision=True)
    rbac.allow("alice", ["create"], ["pods/exec"], namespaces=["team-a"])
    rbac.cluster_roles[TERMINAL_VIEW] = [
        Rule(frozenset({"get", "list", "watch"}), frozenset({"pods", "configmaps"}))
    ]
    return rbac


@pytest.fixture
def fake(rbac: FakeRbac) -> FakeCluster:
    return FakeCluster(rbac, pull_failing_images={"registry.example/missing:1"})


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


def _authorizations(server: TestServer, outcome: str) -> float:
    """The gateway's count of handshake authorizations with ``outcome``."""
    registry = server.app[GATEWAY].metrics.registry
    value = registry.get_sample_value("terminal_proxy_authorizations_total", {"outcome": outcome})
    return float(value or 0)


def _objects(fake: FakeCluster) -> dict[str, list[dict[str, Any]]]:
    return {kind: fake.named(kind, "team-a") for kind in KINDS}


async def test_provisions_exactly_the_expected_objects(
    gateway: TestServer, ckube: ClusterKube, fake: FakeCluster, browser: aiohttp.ClientSession
) -> None:
    term = await open_term(
        browser, str(gateway.make_url(PATH)), "v4.channel.k8s.io", headers={USER_HEADER: "alice"}
    )
    session = await ckube.next_session()
    objects = _objects(fake)
    assert {kind: len(items) for kind, items in objects.items()} == dict.fromkeys(KINDS, 1)
    parent = objects["serviceaccounts"][0]
    name = parent["metadata"]["name"]
    # The terminal is exec'd into as alice (impersonated), in the provisioned pod.
    assert (session.user, session.pod, session.container, session.command) == (
        "alice",
        name,
        "terminal",
        ["sh"],
    )
    assert parent["automountServiceAccountToken"] is False
    assert parent["metadata"]["annotations"]["terminal-proxy.dev/user"] == "alice"
    # Everything else is owned by the parent: one delete removes the session.
    for kind in KINDS[1:]:
        (obj,) = objects[kind]
        assert obj["metadata"]["name"] == name
        assert obj["metadata"]["labels"] == parent["metadata"]["labels"]
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "ServiceAccount",
            name,
            parent["metadata"]["uid"],
        )
    binding = objects["rolebindings"][0]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": TERMINAL_VIEW,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "team-a"}]
    pod = objects["pods"][0]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["securityContext"]["runAsUser"] == 1000
    )
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert pod["volumes"][0]["secret"]["secretName"] == name
    policy = objects["networkpolicies"][0]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["ingress"] == []
    assert [rule["to"] for rule in policy["egress"]] == [
        [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
    ]
    # The kubeconfig's token is the terminal's own service account, with least privilege.
    kubeconfig = json.loads(objects["secrets"][0]["stringData"]["kubeconfig"])
    token = kubeconfig["users"][0]["user"]["token"]
    remember_secret(token)
    sa_user = f"system:serviceaccount:team-a:{name}"
    assert fake.minted[token] == sa_user
    groups = ["system:serviceaccounts", "system:authenticated"]
    assert fake.allowed(sa_user, groups, "list", "", "pods", "team-a")
    assert not fake.allowed(sa_user, groups, "delete", "", "pods", "team-a")
    assert not fake.allowed(sa_user, groups, "list", "", "pods", "other")
    assert not fake.allowed(sa_user, groups, "get", "", "secrets", "team-a")
    await term.ws.close()


async def test_reconnect_reuses_the_terminal(
    gateway: TestServer, ckube: ClusterKube, fake: FakeCluster, browser: aiohttp.ClientSession
) -> None:
    for _ in range(2):
        term = await open_term(
            browser,
            str(gateway.make_url(PATH)),
            "v4.channel.k8s.io",
            headers={USER_HEADER: "alice"},
        )
        await ckube.next_session()
        await term.ws.close()
    assert len(fake.named("pods", "team-a")) == 1


async def test_two_tabs_at_once_get_one_terminal_and_no_lock_is_kept(
    gateway: TestServer, ckube: ClusterKube, fake: FakeCluster, browser: aiohttp.ClientSession
) -> None:
    """Provisioning is serialised per user and namespace; the lock is forgotten after (the
    gateway does not keep one per user for ever)."""
    url = str(gateway.make_url(PATH))
    terms = await asyncio.gather(
        *(
            open_term(browser, url, "v4.channel.k8s.io", headers={USER_HEADER: "alice"})
            for _ in "ab"
        )
    )
    for _ in terms:
        await ckube.next_session()
    assert len(fake.named("pods", "team-a")) == 1
    assert len(provisioner(gateway).locks) == 0
    for term in terms:
        await term.ws.close()


async def test_denied_user_gets_403_and_nothing_is_created(
    gateway: TestServer, fake: FakeCluster, browser: aiohttp.ClientSession
) -> None:
    status, body, _ = await raw_handshake(
        browser,
        str(gateway.make_url(PATH)),
        protocols="v4.channel.k8s.io",
        headers={USER_HEADER: "bob"},
    )
    assert status == 403 and "may not create pods/exec on namespace team-a" in body
    assert not fake.objects


async def test_heartbeat_keeps_and_silence_deletes(
    ckube: ClusterKube, fake: FakeCluster, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    """Re-polls heartbeat the parent; a sweep deletes only terminals that went silent."""
    async with _gateway(
        ckube, tmp_path, authorization={"poll_interval": "200ms", "poll_jitter": 0}
    ) as server:
        prov = provisioner(server)
        now = [1_000_000.0]
        prov.terminals.clock = lambda: now[0]
        term = await open_term(
            browser, str(server.make_url(PATH)), "v4.channel.k8s.io", headers={USER_HEADER: "alice"}
        )
        await ckube.next_session()
        (parent,) = fake.named("serviceaccounts", "team-a")
        name = parent["metadata"]["name"]

        def heartbeat() -> float:
            obj = fake.objects[("", "serviceaccounts", "team-a", name)]
            return float(obj["metadata"]["annotations"]["terminal-proxy.dev/heartbeat"])

        now[0] += 240  # four minutes later, the re-polls write a fresh heartbeat
        await fake.wait_for(lambda: heartbeat() == now[0])
        cluster = cluster_of(server)
        assert await prov.terminals.sweep(cluster) == []
        await term.ws.close()
        now[0] += 301  # silence: more than heartbeat_timeout since the last heartbeat
        assert await prov.terminals.sweep(cluster) == [f"team-a/{name}"]
        assert _objects(fake) == {kind: [] for kind in KINDS}


async def test_gateway_restart_still_cleans_up(
    ckube: ClusterKube,
    fake: FakeCluster,
    tmp_path: Path,
    browser: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """State lives in the cluster: a new gateway's cleanup loop removes what the previous
    one left behind once its expiry has passed."""
    async with _gateway(ckube, tmp_path) as server:
        term = await open_term(
            browser, str(server.make_url(PATH)), "v4.channel.k8s.io", headers={USER_HEADER: "alice"}
        )
        await ckube.next_session()
        await term.ws.close()
    assert len(fake.named("pods", "team-a")) == 1  # the first gateway is gone; the pod stays
    expires = float(
        fake.named("serviceaccounts", "team-a")[0]["metadata"]["annotations"][
            "terminal-proxy.dev/expires-at"
        ]
    )
    # The second gateway runs after the expiry: its own loop (not a call of ours) deletes it.
    monkeypatch.setattr(lifecycle, "wall_clock", lambda: expires + 1)
    config = provision_config(ckube, tmp_path, ROUTES, PROVISION | {"cleanup_interval": "100ms"})
    async with start_gateway(config):
        await fake.wait_for(lambda: not fake.objects)


async def test_expiry_ends_the_session_with_the_time_limit_code(
    ckube: ClusterKube, fake: FakeCluster, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    async with _gateway(
        ckube,
        tmp_path,
        {"expiry": "1s", "heartbeat_timeout": "1s"},
        authorization={"poll_interval": "200ms", "poll_jitter": 0},
    ) as server:
        term = await open_term(
            browser, str(server.make_url(PATH)), "v4.channel.k8s.io", headers={USER_HEADER: "alice"}
        )
        await ckube.next_session()
        code, reason = await term.wait_closed()
        assert (code, reason) == (4004, "session time limit reached")


def _expiry_annotations(fake: FakeCluster) -> tuple[int, int]:
    """The terminal's expires-at and max-expires-at."""
    (parent,) = fake.named("serviceaccounts", "team-a")
    annotations = parent["metadata"]["annotations"]
    return (
        int(annotations["terminal-proxy.dev/expires-at"]),
        int(annotations["terminal-proxy.dev/max-expires-at"]),
    )


async def test_expiry_warning_and_extensions_up_to_max_expiry(
    ckube: ClusterKube, fake: FakeCluster, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    """A v1.terminal-proxy browser is warned before the terminal expires and may extend
    it: the expiry moves on in the cluster (where cleanup reads it), never past
    max_expiry; at the ceiling the warning says so, a request is refused with the reason,
    and the session ends with 4004 at the (extended) expiry."""
    async with _gateway(
        ckube,
        tmp_path,
        {"expiry": "3s", "heartbeat_timeout": "3s", "extension": "2s", "max_expiry": "5s"},
        authorization={"poll_interval": "1s", "poll_jitter": 0},
        session={"expiry_warning": "2s"},
    ) as server:
        term = await open_term(
            browser, str(server.make_url(PATH)), TERMINAL_PROXY, headers={USER_HEADER: "alice"}
        )
        hello = await wait_hello(term)
        assert hello.expires_in is not None and 0 < hello.expires_in <= 3
        expires, ceiling = _expiry_annotations(fake)
        assert ceiling == expires + 2  # created + max_expiry
        warning = await term.next_control(ExpiryWarning)
        assert isinstance(warning, ExpiryWarning) and warning.extendable
        granted = await term.request_extension()
        # One extension of 2s would pass the ceiling: it stops there.
        assert _expiry_annotations(fake) == (ceiling, ceiling)
        assert granted.granted and granted.expires_in is not None
        assert granted.expires_in == pytest.approx(ceiling - time.time(), abs=0.5)
        again = await term.next_control(ExpiryWarning)
        assert isinstance(again, ExpiryWarning) and not again.extendable
        refused = await term.request_extension()
        assert (refused.granted, refused.reason) == (
            False,
            "the terminal has reached its maximum lifetime (kubernetes.provision.max_expiry: 5s)",
        )
        assert await term.wait_closed() == (4004, "session time limit reached")
        assert time.time() >= ceiling - 1  # not before the extended expiry (whole seconds)


async def test_extensions_at_once_each_count_and_reconnects_see_them(
    ckube: ClusterKube, fake: FakeCluster, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    """Two extensions at once (two tabs, two replicas) both land: the write is
    conditional on the resourceVersion read, and a conflict reads again. A browser that
    connects afterwards is granted the extended time."""
    async with _gateway(ckube, tmp_path, {"extension": "10m"}) as server:
        term = await open_term(
            browser, str(server.make_url(PATH)), "v4.channel.k8s.io", headers={USER_HEADER: "alice"}
        )
        await ckube.next_session()
        expires, ceiling = _expiry_annotations(fake)
        name = fake.named("serviceaccounts", "team-a")[0]["metadata"]["name"]
        cluster = cluster_of(server)
        prov = provisioner(server)
        first, second = await asyncio.gather(
            prov.terminals.extend(cluster, "team-a", name),
            prov.terminals.extend(cluster, "team-a", name),
        )
        assert _expiry_annotations(fake) == (expires + 1200, ceiling)
        assert first.expires_in is not None and second.expires_in is not None
        assert sorted((first.expires_in, second.expires_in)) == [
            pytest.approx(expires + 600 - time.time(), abs=1),
            pytest.approx(expires + 1200 - time.time(), abs=1),
        ]
        await term.ws.close()
        again = await open_term(
            browser, str(server.make_url(PATH)), TERMINAL_PROXY, headers={USER_HEADER: "alice"}
        )
        hello = await wait_hello(again)
        assert hello.expires_in == pytest.approx(expires + 1200 - time.time(), abs=1)
        await again.ws.close()
    assert len(fake.named("pods", "team-a")) == 1


@pytest.mark.parametrize(
    ("setup", "status", "text", "left"),
    [
        (
            "pull",
            502,
            "the terminal image 'registry.example/missing:1' cannot be pulled: ErrImagePull",
            True,
        ),
        ("quota", 429, 'namespace team-a is over its resource quota: pods "terminal-', True),
        ("no-bind", 502, "the gateway may not create rolebindings in namespace team-a", True),
        ("pending", 504, "the terminal pod was not ready within 1s", True),
        ("no-sa", 502, "the gateway may not create serviceaccounts in namespace team-a", False),
    ],
)
async def test_failures_are_clear_and_leave_nothing_behind(
    ckube: ClusterKube,
    fake: FakeCluster,
    rbac: FakeRbac,
    tmp_path: Path,
    browser: aiohttp.ClientSession,
    setup: str,
    status: int,
    text: str,
    left: bool,
) -> None:
    provision: dict[str, Any] = {"ready_timeout": "1s"}
    if setup == "pull":
        provision["image"] = "registry.example/missing:1"
    elif setup == "pending":
        fake.pending_images.add(IMAGE)
    elif setup == "quota":
        fake.pod_quota["team-a"] = 0
    elif setup == "no-bind":
        rbac.grants = [g for g in rbac.grants if "bind" not in g[1].verbs]
    elif setup == "no-sa":
        rbac.grants = [
            (subject, dataclasses.replace(rule, verbs=rule.verbs - {"create"}))
            if "serviceaccounts" in rule.resources
            else (subject, rule)
            for subject, rule in rbac.grants
        ]
    async with _gateway(ckube, tmp_path, provision) as server:
        got, body, headers = await raw_handshake(
            browser,
            str(server.make_url(PATH)),
            protocols="v4.channel.k8s.io",
            headers={USER_HEADER: "alice"},
        )
        assert got == status, body
        assert text in body
        # The cluster's failures are the gateway's errors (request id, counted as such);
        # the namespace's quota is an answer about the user's request.
        outcome = {502: "unavailable", 504: "timeout"}.get(status, "refused")
        assert _authorizations(server, outcome) == 1
        if status >= 500:
            assert body.endswith(f"\nrequest id: {headers['X-Request-Id']}\n")
        else:
            assert "X-Request-Id" not in headers
        # Something was created on the way (or not even the parent), and nothing is left.
        created = [
            r
            for r in ckube.requests
            if r.method == "POST" and r.path.endswith("/serviceaccounts") and r.status == 201
        ]
        assert bool(created) == left
        assert not fake.objects
        assert GATEWAY_USER  # the requests above were all the gateway's own
