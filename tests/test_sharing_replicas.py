"""Joins of shared terminals behind the shipped nginx and HAProxy configs with two
replicas: ``?join=<session id>`` is routed by the id's replica like ``?resume=``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import pytest
import yaml

from terminal_proxy.protocols import TERMINAL_PROXY
from tests.conftest import ENV_PATH, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.process import GatewayProcess
from tests.support.proxies import HAProxy, Nginx
from tests.support.termclient import open_term, wait_hello
from tests.test_production import use_native


def _config(tmp_path: Path, name: str, auth_api: FakeAuthApi, kube: Kube, secret: bytes) -> Path:
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(secret).decode() + "\n")
    config = {
        "listen": "127.0.0.1:0",
        "authorization": {
            "backend": auth_api.url,
            "secret_file": str(secret_file),
            "contract": "native",
        },
        "upstream": {"allowed_hosts": [kube.host_port]},
        "session": {"shutdown_grace": "0s", "close_timeout": "2s", "replica_id": name},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.proxies
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_a_join_through_the_proxy_reaches_the_replica_holding_the_session(
    kind: str,
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    use_native(auth_api, "alice")
    auth_api.join_user = {"username": "bob"}
    a_config = _config(tmp_path, "a", auth_api, kube, secret)
    b_config = _config(tmp_path, "b", auth_api, kube, secret)
    async with (
        GatewayProcess(["serve", "--config", str(a_config)]) as a,
        GatewayProcess(["serve", "--config", str(b_config)]) as b,
    ):
        addresses = {"a": a.url.removeprefix("http://"), "b": b.url.removeprefix("http://")}
        cls = Nginx if kind == "nginx" else HAProxy
        async with cls(tmp_path / kind, addresses) as front:
            url = front.url + ENV_PATH
            owners = []
            for _ in range(4):
                term = await open_term(browser, url, TERMINAL_PROXY)
                owners.append((term, await wait_hello(term)))
                await kube.next_session()
            assert {hello.session[0] for _, hello in owners} == {"a", "b"}
            for term, hello in owners:
                viewer = await browser.ws_connect(
                    f"{url}?join={hello.session}", protocols=[TERMINAL_PROXY]
                )
                msg = await viewer.receive()
                joined = json.loads(msg.data)
                assert (joined["type"], joined["session"], joined["role"]) == (
                    "hello",
                    hello.session,
                    "viewer",
                )
                await viewer.close()
                await term.ws.close()
