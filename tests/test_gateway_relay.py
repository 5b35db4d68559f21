"""Every browser × upstream subprotocol pair, end to end through real servers.

For each pair: typed input is echoed by the upstream's shell, output and stderr arrive,
a resize reaches the pod (Kubernetes browsers), exit code N is visible to the browser,
and the browser leaving makes the upstream see the v5 close signal or EOT.
"""

from __future__ import annotations

import itertools

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from terminal_proxy.protocols import BROWSER_SUBPROTOCOLS
from tests.conftest import ENV_PATH, GatewayFactory, Kube, gitlab_channel
from tests.fakes.auth_api import FakeAuthApi
from tests.fakes.runner_session import FakeRunnerSession
from tests.support.termclient import Term, open_term

K8S_UPSTREAMS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)
GITLAB_UPSTREAMS = ("terminal.gitlab.com", "base64.terminal.gitlab.com")
PAIRS = list(itertools.product(BROWSER_SUBPROTOCOLS, K8S_UPSTREAMS + GITLAB_UPSTREAMS))


def is_k8s(protocol: str) -> bool:
    return "channel.k8s.io" in protocol


async def _gateway(
    make_gateway: GatewayFactory,
    kube: Kube,
    runner: FakeRunnerSession,
) -> TestServer:
    return await make_gateway(
        upstream={"allowed_hosts": [kube.host_port, runner.host_port], "offer_v5": False}
    )


def _point_at(
    auth_api: FakeAuthApi,
    kube: Kube,
    runner: FakeRunnerSession,
    upstream: str,
    *,
    command: list[str] | None = None,
    tty: bool = True,
) -> None:
    if is_k8s(upstream):
        auth_api.channel = gitlab_channel(kube, command=command, subprotocols=[upstream], tty=tty)
    else:
        auth_api.channel = {
            "Subprotocols": [upstream],
            "Url": runner.url,
            "Header": {"Authorization": [runner.token]},
            "CAPem": runner.ca_pem,
        }


@pytest.mark.parametrize(("browser_protocol", "upstream_protocol"), PAIRS)
async def test_interactive_pair(
    make_gateway: GatewayFactory,
    kube: Kube,
    runner: FakeRunnerSession,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    browser_protocol: str,
    upstream_protocol: str,
) -> None:
    """Typing, output, resize and the browser leaving, for one pair."""
    server = await _gateway(make_gateway, kube, runner)
    _point_at(auth_api, kube, runner, upstream_protocol)
    term = await open_term(browser, str(server.make_url(ENV_PATH)), browser_protocol)
    if is_k8s(upstream_protocol):
        session = await kube.next_session()
        assert session.subprotocol == upstream_protocol
        if is_k8s(browser_protocol):
            await term.resize(101, 33)
            await session.wait_for_resize(101, 33)
            await term.send_stdin(b"stty size\r")
            await term.read_until(b"33 101")
    await term.send_stdin(b"echo pair-check\r")
    await term.read_until(b"\r\npair-check\r\n")
    await term.ws.close()
    if is_k8s(upstream_protocol):
        if upstream_protocol.startswith("v5."):
            await session.wait_for_close_signal()
        else:
            await session.wait_for_eot()
        await session.wait_closed()
    else:
        record = runner.records[-1]
        await record.closed.wait()
        assert record.eot


@pytest.mark.parametrize(("browser_protocol", "upstream_protocol"), PAIRS)
async def test_exit_code_pair(
    make_gateway: GatewayFactory,
    kube: Kube,
    runner: FakeRunnerSession,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    browser_protocol: str,
    upstream_protocol: str,
) -> None:
    """Stdout, stderr and exit code 3 reach the browser the way its protocol can carry."""
    server = await _gateway(make_gateway, kube, runner)
    _point_at(
        auth_api,
        kube,
        runner,
        upstream_protocol,
        command=["sh", "-c", "echo out; echoerr err; exit 3"],
        tty=False,
    )
    term = await open_term(browser, str(server.make_url(ENV_PATH)), browser_protocol)
    if not is_k8s(upstream_protocol):
        # A runner session has no status channel: the shell's exit is a plain close.
        await term.send_stdin(b"exit 3\r")
        code, reason = await term.wait_closed()
        assert (code, reason) == (1000, "session ended")
        return
    code, reason = await term.wait_closed()
    assert (code, reason) == (1000, "exit code 3")
    _check_streams(term, browser_protocol)
    if browser_protocol in ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"):
        assert [e.code for e in term.exits] == [3]
        assert term.exits[0].status is not None and b'"NonZeroExitCode"' in term.exits[0].status
    elif is_k8s(browser_protocol):
        assert [e.code for e in term.exits] == [3]  # v1: the error text names the code
    elif browser_protocol == "v1.terminal-proxy":
        assert [e.code for e in term.exits] == [3] and "exit code" in term.exits[0].message
        assert b"Status" not in term.stdout and b"{" not in term.stdout
    else:
        assert term.exits == []
        assert b"Status" not in term.stdout and b"{" not in term.stdout


def _check_streams(term: Term, browser_protocol: str) -> None:
    if is_k8s(browser_protocol):
        assert bytes(term.stdout) == b"out\n"
        assert bytes(term.stderr) == b"err\n"
    else:
        assert sorted(bytes(term.stdout).splitlines()) == [b"err", b"out"]


@pytest.mark.parametrize("upstream_protocol", K8S_UPSTREAMS)
async def test_exit_zero(
    make_gateway: GatewayFactory,
    kube: Kube,
    runner: FakeRunnerSession,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    upstream_protocol: str,
) -> None:
    """A clean exit is 'exit code 0' for every Kubernetes upstream, v1 included."""
    server = await _gateway(make_gateway, kube, runner)
    _point_at(auth_api, kube, runner, upstream_protocol, command=["echo", "done"], tty=False)
    term = await open_term(browser, str(server.make_url(ENV_PATH)), "v5.channel.k8s.io")
    assert await term.wait_closed() == (1000, "exit code 0")
    assert bytes(term.stdout) == b"done\n"
    assert [e.code for e in term.exits] == [0]


async def test_v5_half_close_reaches_upstream(
    make_gateway: GatewayFactory,
    kube: Kube,
    runner: FakeRunnerSession,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """A v5 browser closing stdin lets `cat` finish and the exit status come back."""
    server = await _gateway(make_gateway, kube, runner)
    _point_at(auth_api, kube, runner, "v5.channel.k8s.io", command=["cat"], tty=False)
    term = await open_term(browser, str(server.make_url(ENV_PATH)), "v5.channel.k8s.io")
    await term.send_stdin(b"hello cat\n")
    await term.read_until(b"hello cat\n")
    await term.close_stdin()
    assert await term.wait_closed() == (1000, "exit code 0")
