"""Kubernetes routes: identity from a trusted proxy or a JWT, SubjectAccessReview, and
the dial with the gateway's credentials plus impersonation; revocation via the review."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from terminal_proxy.authorization import BrowserRequest
from terminal_proxy.config import KubernetesIdentityConfig, load_config
from terminal_proxy.kube.cluster import ClusterError
from terminal_proxy.kube.identity import Identity, IdentityVerifier
from terminal_proxy.protocols import TERMINAL_PROXY
from tests.fakes.kube_cluster import FakeCluster, FakeRbac
from tests.kube.setup import (
    GATEWAY_USER,
    GROUPS_HEADER,
    USER_HEADER,
    ClusterKube,
    gateway_rbac,
    kube_config,
    start_gateway,
)
from tests.support.logcapture import remember_secret
from tests.support.termclient import open_term, raw_handshake, wait_hello

PATH = "/k8s/dev/default/mypod/main/terminal.ws"


@pytest.fixture
def rbac() -> FakeRbac:
    rbac = FakeRbac()
    gateway_rbac(rbac)
    return rbac


@pytest.fixture
async def ckube(rbac: FakeRbac) -> AsyncIterator[ClusterKube]:
    async with ClusterKube(FakeCluster(rbac)) as server:
        yield server


def allow_alice(rbac: FakeRbac) -> list[Any]:
    return [
        rbac.allow("alice", ["create"], ["pods/exec"], namespaces=["default"]),
        rbac.allow("alice", ["get"], ["pods"], namespaces=["default"]),
    ]


@contextlib.asynccontextmanager
async def _gateway(
    ckube: ClusterKube, tmp_path: Path, **overrides: Any
) -> AsyncIterator[TestServer]:
    config = kube_config(ckube, ckube.token, tmp_path, overrides)
    async with start_gateway(config) as server:
        yield server


@pytest.fixture
async def gateway(ckube: ClusterKube, tmp_path: Path) -> AsyncIterator[TestServer]:
    async with _gateway(ckube, tmp_path) as server:
        yield server


def _as(user: str, *groups: str) -> dict[str, str]:
    headers = {USER_HEADER: user}
    if groups:
        headers[GROUPS_HEADER] = ",".join(groups)
    return headers


async def test_allowed_user_gets_a_terminal_as_themselves(
    gateway: TestServer, ckube: ClusterKube, rbac: FakeRbac, browser: aiohttp.ClientSession
) -> None:
    """The review allows alice; the exec is dialled with the gateway's token, impersonating
    alice and her groups, so the API server (and its audit log) sees alice."""
    allow_alice(rbac)
    term = await open_term(
        browser,
        str(gateway.make_url(PATH)),
        "v4.channel.k8s.io",
        headers=_as("alice", "devs", "ops"),
    )
    session = await ckube.next_session()
    assert session.user == "alice"
    assert session.headers["Authorization"] == f"Bearer {ckube.token}"
    assert session.headers.getall("Impersonate-Group") == ["devs", "ops"]
    assert session.command == ["sh"]
    assert session.container == "main"
    await term.send_stdin(b"echo hi\n")
    await term.read_until(b"hi")
    specs = [spec for spec, _ in ckube.fake.reviews]
    assert {
        (
            s["resourceAttributes"]["verb"],
            s["resourceAttributes"]["resource"],
            s["resourceAttributes"].get("subresource"),
        )
        for s in specs
    } == {("create", "pods", "exec"), ("get", "pods", None)}
    assert all(s["user"] == "alice" and "devs" in s["groups"] for s in specs)
    assert all(s["resourceAttributes"]["name"] == "mypod" for s in specs)
    await term.ws.close()


async def test_denied_user_gets_403_before_upgrade(
    gateway: TestServer, ckube: ClusterKube, rbac: FakeRbac, browser: aiohttp.ClientSession
) -> None:
    rbac.allow("bob", ["get"], ["pods"], namespaces=["default"])  # but not pods/exec
    status, body, _ = await raw_handshake(
        browser, str(gateway.make_url(PATH)), protocols="v4.channel.k8s.io", headers=_as("bob")
    )
    assert status == 403
    assert "user 'bob' may not create pods/exec on default/mypod in cluster 'dev'" in body
    assert not ckube.sessions


@pytest.mark.parametrize(
    ("headers", "status", "text"),
    [
        ({}, 401, "no trusted user identity"),
        ({USER_HEADER: "system:admin"}, 403, "system: identities"),
        ({USER_HEADER: "alice", GROUPS_HEADER: "system:masters"}, 403, "system: identities"),
    ],
)
async def test_identity_required(
    gateway: TestServer,
    rbac: FakeRbac,
    browser: aiohttp.ClientSession,
    headers: dict[str, str],
    status: int,
    text: str,
) -> None:
    allow_alice(rbac)
    got, body, _ = await raw_handshake(
        browser, str(gateway.make_url(PATH)), protocols="v4.channel.k8s.io", headers=headers
    )
    assert (got, text in body) == (status, True)


async def test_unknown_cluster_is_404(
    gateway: TestServer, rbac: FakeRbac, browser: aiohttp.ClientSession
) -> None:
    status, body, _ = await raw_handshake(
        browser,
        str(gateway.make_url("/k8s/prod/default/mypod/main/terminal.ws")),
        protocols="v4.channel.k8s.io",
        headers=_as("alice"),
    )
    assert status == 404 and "no cluster named 'prod'" in body


async def test_header_from_untrusted_peer_is_ignored(
    ckube: ClusterKube, rbac: FakeRbac, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    """The identity header counts only from kubernetes.identity.trusted_proxies."""
    allow_alice(rbac)
    overrides = {
        "kubernetes": {
            "clusters": [{"name": "dev", "kubeconfig": str(tmp_path / "kubeconfig")}],
            "identity": {"user_header": USER_HEADER, "trusted_proxies": ["10.0.0.0/8"]},
        }
    }
    async with _gateway(ckube, tmp_path, **overrides) as server:
        status, body, _ = await raw_handshake(
            browser, str(server.make_url(PATH)), protocols="v4.channel.k8s.io", headers=_as("alice")
        )
        assert status == 401 and "no trusted user identity" in body


async def test_revoked_rolebinding_closes_with_4001(
    ckube: ClusterKube, rbac: FakeRbac, tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    """Every re-poll re-runs the review; taking the permission away ends the session."""
    grants = allow_alice(rbac)
    async with _gateway(
        ckube, tmp_path, authorization={"poll_interval": "200ms", "poll_jitter": 0}
    ) as server:
        term = await open_term(
            browser, str(server.make_url(PATH)), "v4.channel.k8s.io", headers=_as("alice")
        )
        session = await ckube.next_session()
        first = len(ckube.fake.reviews)
        await ckube.fake.wait_for(lambda: len(ckube.fake.reviews) >= first + 4)
        assert not term.closed  # still allowed on the re-polls so far
        rbac.revoke(grants[0])
        code, reason = await term.wait_closed()
        assert (code, reason) == (4001, "authorization revoked")
        await session.wait_closed()


async def test_gateway_without_impersonate_permission_fails_clearly(
    tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    """The review passes but the API server refuses the impersonation: the browser gets
    the API server's own message before any upgrade."""
    rbac = FakeRbac()
    rbac.allow(GATEWAY_USER, ["create"], ["subjectaccessreviews"], groups=["authorization.k8s.io"])
    allow_alice(rbac)
    async with ClusterKube(FakeCluster(rbac)) as ckube, _gateway(ckube, tmp_path) as server:
        status, body, _ = await raw_handshake(
            browser,
            str(server.make_url(PATH)),
            protocols="v4.channel.k8s.io",
            headers=_as("alice"),
        )
        assert status == 502
        assert f'User "{GATEWAY_USER}" cannot impersonate resource "users"' in body


async def test_gateway_without_review_permission_is_502(
    tmp_path: Path, browser: aiohttp.ClientSession
) -> None:
    rbac = FakeRbac()
    allow_alice(rbac)
    async with ClusterKube(FakeCluster(rbac)) as ckube, _gateway(ckube, tmp_path) as server:
        status, body, _ = await raw_handshake(
            browser,
            str(server.make_url(PATH)),
            protocols="v4.channel.k8s.io",
            headers=_as("alice"),
        )
        assert status == 502
        assert "the gateway may not create SubjectAccessReviews in cluster dev" in body


async def test_cluster_host_is_added_to_the_allowlist(ckube: ClusterKube, tmp_path: Path) -> None:
    """No upstream.allowed_hosts given, yet the cluster's API host is dialled (and only it)."""
    config = kube_config(ckube, ckube.token, tmp_path)
    assert config.upstream.allowed_hosts == ()
    from terminal_proxy.config import validate_for_serving

    assert validate_for_serving(config) == []


# JWT identity ---------------------------------------------------------------------------


def _keys(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "keys.pem"
    path.write_bytes(pem)
    return key, path


def _verifier(path: Path) -> IdentityVerifier:
    config = load_config(
        f"""
kubernetes:
  identity:
    jwt_keys_file: {path}
    jwt_issuer: https://idp.example.com
    jwt_audience: terminal-proxy
    jwt_cookie: tp_token
    username_prefix: "oidc:"
    groups_prefix: "oidc:"
"""
    )
    return IdentityVerifier(config.kubernetes.identity)


def _request(**headers: str) -> BrowserRequest:
    return BrowserRequest(PATH, "", tuple(headers.items()), "127.0.0.1", "127.0.0.1", "127.0.0.1")


def _token(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    body = {
        "iss": "https://idp.example.com",
        "aud": "terminal-proxy",
        "sub": "alice",
        "groups": ["devs"],
        "exp": int(time.time()) + 300,
    }
    body.update(claims)
    token = jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="ES256")
    remember_secret(token)
    return token


def test_jwt_identity(tmp_path: Path) -> None:
    key, path = _keys(tmp_path)
    verifier = _verifier(path)
    good = _token(key)
    for request in (
        _request(Authorization=f"Bearer {good}"),
        _request(Cookie=f"a=b; tp_token={good}"),
    ):
        identity = verifier.identify(request)
        assert identity == Identity("oidc:alice", ("oidc:devs",))


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "other"}, "wrong audience"),
        ({"iss": "https://evil.example.com"}, "wrong issuer"),
        ({"exp": None}, "claim 'exp' is missing"),
        ({"sub": None}, "claim 'sub' is missing"),
    ],
)
def test_jwt_refused(tmp_path: Path, claims: dict[str, Any], reason: str) -> None:
    key, path = _keys(tmp_path)
    answer = _verifier(path).identify(_request(Authorization=f"Bearer {_token(key, **claims)}"))
    assert getattr(answer, "status", None) == 401
    assert reason in answer.body.decode()  # type: ignore[union-attr]


def test_jwt_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    _, path = _keys(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1())
    answer = _verifier(path).identify(_request(Authorization=f"Bearer {_token(other)}"))
    assert getattr(answer, "status", None) == 401


def test_identity_config_problems() -> None:
    from terminal_proxy.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(
            """
routes: [{kind: kubernetes}]
kubernetes:
  identity: {jwt_keys_file: /nonexistent.pem, groups_header: X-G}
"""
        )
    text = str(info.value)
    assert "kubernetes.clusters: Kubernetes routes need at least one cluster" in text
    assert "kubernetes.identity.jwt_issuer: is required with jwt_keys_file" in text
    assert "kubernetes.identity.groups_header: only goes with user_header" in text
    assert KubernetesIdentityConfig().user_header is None


def test_unreadable_jwt_keys_are_reported(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("nothing\n")
    for name, problem in (("none.pem", "cannot read"), ("empty.pem", "holds no PEM public key")):
        identity = KubernetesIdentityConfig(
            jwt_keys_file=str(tmp_path / name), jwt_issuer="i", jwt_audience="a"
        )
        with pytest.raises(ClusterError, match=problem):
            IdentityVerifier(identity)


async def test_joins_of_a_shared_terminal_are_access_reviews(
    gateway: TestServer, ckube: ClusterKube, rbac: FakeRbac, browser: aiohttp.ClientSession
) -> None:
    """docs/sharing.md: on a Kubernetes route, ``get`` on the pod makes a viewer, ``create``
    on pods/exec too a writer, nothing a 403 naming what is missing."""
    allow_alice(rbac)
    rbac.allow("carol", ["get"], ["pods"], namespaces=["default"])
    url = str(gateway.make_url(PATH))
    term = await open_term(browser, url, TERMINAL_PROXY, headers=_as("alice"))
    hello = await wait_hello(term)
    await ckube.next_session()
    for user, role in (("alice", "writer"), ("carol", "viewer")):
        ws = await browser.ws_connect(
            f"{url}?join={hello.session}", protocols=[TERMINAL_PROXY], headers=_as(user)
        )
        first = json.loads((await ws.receive()).data)
        assert (first["type"], first["role"]) == ("hello", role), user
        await ws.close()
    status, body, _ = await raw_handshake(
        browser, f"{url}?join={hello.session}", protocols=TERMINAL_PROXY, headers=_as("dave")
    )
    assert status == 403 and "may not get pods on default/mypod" in body
    await term.ws.close()
