"""Cluster mode in process: gateways (real aiohttp apps) sharing one real redis-server.

Global limits with per-session leases, the registry, revocation over the channel, and
what happens while Redis is down. The three-process tests are tests/test_cluster.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from terminal_proxy.app import GATEWAY
from terminal_proxy.cluster.agent import CLUSTER, ClusterAgent
from terminal_proxy.protocols import TERMINAL_PROXY
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.redis import RedisServer
from tests.support.termclient import Term, open_term, raw_handshake, wait_hello

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with RedisServer(tmp_path / "redis") as server:
        yield server


def native_user(auth_api: FakeAuthApi, username: str) -> None:
    """The fake web app names ``username`` (the native contract carries the user)."""
    channel = auth_api.channel
    if auth_api.contract != "native":
        auth_api.contract = "native"
        auth_api.channel = {
            "url": channel["Url"],
            "subprotocols": channel["Subprotocols"],
            "headers": channel["Header"],
            "ca_pem": channel["CAPem"],
        }
    auth_api.user = {"id": "1", "username": username}


async def replica(
    make_gateway: GatewayFactory, redis: RedisServer, name: str, **overrides: Any
) -> TestServer:
    cluster = redis.cluster_config(**overrides.pop("cluster", {}))
    return await make_gateway(
        authorization={"contract": "native"},
        session={"replica_id": name},
        cluster=cluster,
        **overrides,
    )


def agent_of(server: TestServer) -> ClusterAgent:
    return server.app[CLUSTER]


async def ended(servers: list[TestServer], term: Term) -> None:
    """Wait until the session of ``term`` has ended on its replica and its release has
    reached Redis."""
    assert term.hello is not None
    async with asyncio.timeout(10):
        for server in servers:
            await agent_of(server).forgotten(term.hello.session)


async def opened(browser: aiohttp.ClientSession, server: TestServer) -> Term:
    term = await open_term(browser, str(server.make_url(ENV_PATH)), TERMINAL_PROXY)
    await wait_hello(term)
    return term


async def test_per_user_limit_holds_across_replicas(
    make_gateway: GatewayFactory,
    redis_server: RedisServer,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """Limit 2 per user, three replicas: a burst of six opens (two per replica) gets
    exactly two terminals; the others are 429 with the limit's reason. Closing one frees
    its slot on every replica at once (release off the hot path, but prompt)."""
    native_user(auth_api, "alice")
    servers = [
        await replica(make_gateway, redis_server, name, limits={"max_sessions_per_user": 2})
        for name in ("a", "b", "c")
    ]
    urls = [str(s.make_url(ENV_PATH)) for s in servers for _ in range(2)]

    async def attempt(url: str) -> Term | tuple[int, str]:
        try:
            return await opened(browser, url_server[url])
        except aiohttp.WSServerHandshakeError as exc:
            return (exc.status, exc.message)

    url_server = {str(s.make_url(ENV_PATH)): s for s in servers}
    results = await asyncio.gather(*(attempt(url) for url in urls))
    terms = [r for r in results if isinstance(r, Term)]
    refused = [r for r in results if not isinstance(r, Term)]
    assert len(terms) == 2, results
    assert all(status == 429 for status, _ in refused), refused
    status, body, _ = await raw_handshake(browser, urls[0], protocols=TERMINAL_PROXY)
    assert status == 429 and "limit 2" in body

    live = {s.id for server in servers for s in server.app[GATEWAY].registry.live}
    await terms[0].ws.close()
    await ended(servers, terms[0])
    # Released at once (off the handshake's path): another replica admits the next one.
    assert len(live) == 2
    third = await opened(browser, servers[2])
    await third.ws.close()
    await terms[1].ws.close()
