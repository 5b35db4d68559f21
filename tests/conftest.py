"""Shared fixtures: real servers on 127.0.0.1 and a gateway wired to them.

The wiring mirrors Workhorse's ``wireupChannel``: a fake kube-apiserver (TLS, real
protocol), a fake authorization API (real contract, JWT verified) and the gateway itself
as a real aiohttp server; the test plays the browser with an aiohttp client.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from terminal_proxy.app import build_app
from terminal_proxy.config import Config, load_config
from tests.fakes.auth_api import FakeAuthApi
from tests.fakes.kube_apiserver import ExecSession, FakeKubeApiServer
from tests.fakes.runner_session import FakeRunnerSession
from tests.support.logcapture import LOG_PATH, leaked_secrets, remember_secret
from tests.support.logcapture import install as install_log_capture

# One unit for every safety-net timeout, scalable on slow machines.
UNIT = float(os.environ.get("TERMINAL_PROXY_TEST_TIMEOUT_FACTOR", "1"))


def pytest_configure(config: pytest.Config) -> None:
    install_log_capture()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """However the tests were selected or ordered: no token, session id, cookie, secret or
    JWT that any test used was logged (test-output/full-run.log, subprocesses included)."""
    leaked = leaked_secrets()
    if leaked:
        shown = [s[:6] + "…" for s in leaked]
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"SECRETS LEAKED: {len(leaked)} secret(s) found in {LOG_PATH}: {shown}"
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to 127.0.0.1 only; never through an environment proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def secret() -> bytes:
    value = secrets.token_bytes(32)
    remember_secret(base64.b64encode(value).decode())
    return value


class Kube(FakeKubeApiServer):
    """The fake kube-apiserver with one random bearer token, known to the test."""

    def __init__(self, **kwargs: Any) -> None:
        self.token = secrets.token_urlsafe(18)
        remember_secret(self.token)
        super().__init__(tokens=(self.token,), **kwargs)


@pytest.fixture
async def kube() -> AsyncIterator[Kube]:
    server = Kube()
    async with server:
        yield server


@pytest.fixture
async def auth_api(secret: bytes, kube: Kube) -> AsyncIterator[FakeAuthApi]:
    async with FakeAuthApi(secret=secret) as api:
        api.channel = gitlab_channel(kube)
        yield api
        for request in api.requests:
            for name in ("gitlab-workhorse-api-request", "terminal-proxy-api-request", "cookie"):
                for value in request.headers.get(name, []):
                    remember_secret(value)


def gitlab_channel(
    kube: Kube,
    *,
    command: list[str] | None = None,
    subprotocols: list[str] | None = None,
    tty: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A Rails-style Channel object pointing at the fake kube-apiserver."""
    url = kube.exec_url(
        pod="mypod",
        container="main",
        command=command or ["sh"],
        tty=tty,
        stdin=True,
        stdout=True,
        stderr=not tty,
    )
    return {
        "Subprotocols": subprotocols or ["channel.k8s.io"],
        "Url": url,
        "Header": {"Authorization": [f"Bearer {kube.token}"]},
        "CAPem": kube.ca_pem,
        "MaxSessionTime": 0,
        **extra,
    }


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(
    auth_url: str, secret: bytes, allowed: list[str], overrides: dict[str, Any] | None = None
) -> Config:
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "authorization": {
            "backend": auth_url,
            "secret_env": "TP_TEST_SECRET",
            "timeout": "5s",
            "poll_interval": "60s",
        },
        "upstream": {"allowed_hosts": allowed, "dial_timeout": "5s"},
        "session": {"shutdown_grace": 0, "close_timeout": "2s"},
    }
    doc = _merge(doc, overrides or {})
    env = {"TP_TEST_SECRET": base64.b64encode(secret).decode()}
    return load_config(yaml.safe_dump(doc), environ=env)


GatewayFactory = Callable[..., Coroutine[Any, Any, TestServer]]


@pytest.fixture
async def make_gateway(
    auth_api: FakeAuthApi, kube: Kube, secret: bytes
) -> AsyncIterator[GatewayFactory]:
    servers: list[TestServer] = []

    async def make(**overrides: Any) -> TestServer:
        config = make_config(auth_api.url, secret, [kube.host_port], overrides)
        server = TestServer(build_app(config), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestServer:
    return await make_gateway()


@pytest.fixture
async def runner() -> AsyncIterator[FakeRunnerSession]:
    async with FakeRunnerSession() as server:
        remember_secret(server.token)
        remember_secret(server.session_id)
        yield server


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


ENV_PATH = "/group/project/-/environments/1/terminal.ws"
JOB_PATH = "/group/sub/project/-/jobs/7/terminal.ws"


async def wait_for_stdin_end(session: ExecSession) -> None:
    """The upstream was told its input ended: v5 close signal, or EOT on older protocols."""
    if session.subprotocol == "v5.channel.k8s.io":
        await session.wait_for_close_signal()
    else:
        await session.wait_for_eot()
