"""Cluster mode in process: gateways (real aiohttp apps) sharing one real redis-server.

Global limits with per-session leases, the registry, revocation over the channel, and
what happens while Redis is down. The three-process tests are tests/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer

from terminal_proxy.app import GATEWAY
from terminal_proxy.cluster import keys
from terminal_proxy.cluster.agent import CLUSTER, ClusterAgent, RedisState
from terminal_proxy.cluster.directory import RedisDirectory
from terminal_proxy.cluster.limits import RedisCounts
from terminal_proxy.cluster.redis import connect
from terminal_proxy.cluster.registry import list_sessions
from terminal_proxy.cluster.revoke import Revocation, parse, publish
from terminal_proxy.config import load_config
from terminal_proxy.errors import LimitReached
from terminal_proxy.protocols import TERMINAL_PROXY
from terminal_proxy.registry import Claim
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.redis import RedisServer
from tests.support.termclient import Term, drop, open_term, raw_handshake, wait_hello

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
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
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


async def test_max_sessions_counts_across_replicas(
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """limits.max_sessions 2 over two replicas: one on each, the third is 503."""
    native_user(auth_api, "alice")
    a, b = [
        await replica(make_gateway, redis_server, name, limits={"max_sessions": 2})
        for name in ("a", "b")
    ]
    first, second = await opened(browser, a), await opened(browser, b)
    status, body, _ = await raw_handshake(
        browser, str(a.make_url(ENV_PATH)), protocols=TERMINAL_PROXY
    )
    assert (status, body.partition("\n")[0]) == (
        503,
        "the gateway is at its limit of open terminals; try again later",
    )
    await first.ws.close()
    await ended([a, b], first)
    third = await opened(browser, a)
    for term in (second, third):
        await term.ws.close()


async def test_revocation_closes_the_users_sessions_on_every_replica(
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """A message on the channel closes alice's sessions on both replicas with 4001 and
    the reason within a second; bob's session carries on."""
    servers = [await replica(make_gateway, redis_server, name) for name in ("a", "b")]
    native_user(auth_api, "alice")
    alices = [await opened(browser, server) for server in servers]
    native_user(auth_api, "bob")
    bob = await opened(browser, servers[0])
    client = redis_server.client()
    try:
        started = asyncio.get_running_loop().time()
        listeners = await publish(client, Revocation("user", "alice", "account blocked"))
        assert listeners == 2
        closes = await asyncio.gather(*(term.wait_closed() for term in alices))
        took = asyncio.get_running_loop().time() - started
    finally:
        await client.aclose()
    assert closes == [(4001, "authorization revoked: account blocked")] * 2
    assert took < 1.0, took
    await bob.send_stdin(b"echo still-here\r")
    await bob.read_until(b"\r\nstill-here\r\n")
    await bob.ws.close()


def test_revocation_messages_are_checked() -> None:
    assert parse('{"user": "alice", "reason": "x"}') == Revocation("user", "alice", "x")
    assert parse('{"session": "a.0123"}') == Revocation("session", "a.0123", "")
    assert parse('{"route": "pods", "reason": "line\\nbreak"}').reason == "line break"
    assert len(parse('{"user": "a", "reason": "' + "x" * 500 + '"}').reason) == 96
    for bad, why in [
        ("nope", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"user": "a", "route": "b"}', "exactly one"),
        ('{"user": ""}', "non-empty string"),
        ('{"user": "a", "reason": 1}', '"reason" must be a string'),
        ('{"user": "a", "by": "me"}', "unknown fields: by"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse(bad)
    assert Revocation("user", "alice", "r").encode() == '{"user":"alice","reason":"r"}'


async def test_redis_down_refuses_new_sessions_and_never_cuts_live_ones(
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """Redis killed: the live session carries on, a new one is 503 (on_redis_down:
    refuse, the default), readiness says why. Redis back (empty, no persistence): the
    heartbeat re-registers the live session and new sessions are admitted again."""
    native_user(auth_api, "alice")
    server = await replica(make_gateway, redis_server, "a", cluster={"lease": "3s"})
    agent = agent_of(server)
    term = await opened(browser, server)
    url = str(server.make_url(ENV_PATH))

    await redis_server.stop()
    await term.send_stdin(b"echo alive\r")
    await term.read_until(b"\r\nalive\r\n")
    status, body, _ = await raw_handshake(browser, url, protocols=TERMINAL_PROXY)
    assert (status, body.partition("\n")[0]) == (
        503,
        "the cluster's session store cannot be reached; try again shortly",
    )
    async with browser.get(server.make_url("/-/readiness")) as response:
        assert response.status == 503
        assert (await response.text()).startswith("redis unreachable: ")
    await term.send_stdin(b"echo still-alive\r")
    await term.read_until(b"\r\nstill-alive\r\n")

    await redis_server.start()
    async with asyncio.timeout(10):
        await agent.wait_up()
    client = redis_server.client()
    try:
        sessions = await list_sessions(client)
    finally:
        await client.aclose()
    assert term.hello is not None
    assert [(s.id, s.replica, s.user, s.phase) for s in sessions] == [
        (term.hello.session, "a", "user:alice", "attached")
    ]
    async with browser.get(server.make_url("/-/readiness")) as response:
        assert response.status == 200
    second = await opened(browser, server)
    await second.ws.close()
    await term.ws.close()


async def test_redis_down_with_local_fallback_admits_on_the_replicas_limits(
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """on_redis_down: local: while Redis is down, the replica's own limits decide (and
    readiness stays up); the session admitted meanwhile is registered when Redis returns."""
    native_user(auth_api, "alice")
    server = await replica(
        make_gateway,
        redis_server,
        "a",
        cluster={"on_redis_down": "local"},
        limits={"max_sessions_per_user": 1},
    )
    agent = agent_of(server)
    await redis_server.stop()
    term = await opened(browser, server)
    assert agent.state is RedisState.DOWN
    status, _, _ = await raw_handshake(
        browser, str(server.make_url(ENV_PATH)), protocols=TERMINAL_PROXY
    )
    assert status == 429
    async with browser.get(server.make_url("/-/readiness")) as response:
        assert response.status == 200
    await redis_server.start()
    async with asyncio.timeout(10):
        await agent.wait_up()
    client = redis_server.client()
    try:
        assert [s.id for s in await list_sessions(client)] == [term.hello and term.hello.session]
    finally:
        await client.aclose()
    await term.ws.close()


async def test_tls_and_password_to_redis(
    make_gateway: GatewayFactory,
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """rediss:// verified against the trustme CA, AUTH from the password file; the
    replica registers itself in the directory with its lease."""
    ca = trustme.CA()
    async with RedisServer(tmp_path / "tls", tls=ca, password="pw-" + "x" * 20) as server:
        native_user(auth_api, "alice")
        gateway = await replica(make_gateway, server, "a")
        assert agent_of(gateway).state is RedisState.UP
        term = await opened(browser, gateway)
        client = server.client()
        try:
            assert await client.zcard(keys.SESSIONS) == 1
            assert await client.pttl(keys.replica_key("a")) > 0
            assert await RedisDirectory(client).internal_url("a") is None
            await client.hset(keys.replica_key("b"), "internal_url", "http://10.0.0.6:9100")
            assert await RedisDirectory(client).internal_url("b") == "http://10.0.0.6:9100"
        finally:
            await client.aclose()
        await term.ws.close()
        # Without the CA the server is not believed.
        config = load_config(f"cluster:\n  redis_url: {server.url}\n", environ={}).cluster
        untrusting = connect(config)
        try:
            with pytest.raises(Exception, match="certificate verify failed"):
                await untrusting.ping()
        finally:
            await untrusting.aclose()


async def test_revocation_by_session_and_by_route(
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """``session`` closes that one session; ``route`` every session of the route; a
    malformed message closes nothing."""
    native_user(auth_api, "alice")
    server = await replica(make_gateway, redis_server, "a")
    first, second = await opened(browser, server), await opened(browser, server)
    route = next(iter(server.app[GATEWAY].registry.live)).request.route
    assert route
    client = redis_server.client()
    try:
        assert await client.publish(keys.REVOKE_CHANNEL, "{not json") == 1
        assert first.hello is not None
        await publish(client, Revocation("session", first.hello.session, "one"))
        assert await first.wait_closed() == (4001, "authorization revoked: one")
        await echo_term(second, "spared")
        await publish(client, Revocation("route", route))
        assert await second.wait_closed() == (4001, "authorization revoked")
    finally:
        await client.aclose()


async def echo_term(term: Term, text: str) -> None:
    await term.send_stdin(f"echo {text}\r".encode())
    await term.read_until(f"\r\n{text}\r\n".encode())


async def test_registry_phases_and_the_cluster_metrics(
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """The registry says attached / detached; /metrics shows Redis up and the sessions by
    replica from the registry (after a heartbeat)."""
    native_user(auth_api, "alice")
    a = await replica(make_gateway, redis_server, "a", metrics={"listen": "127.0.0.1:0"})
    b = await replica(make_gateway, redis_server, "b")
    on_a, on_b = await opened(browser, a), await opened(browser, b)
    assert on_b.hello is not None
    detached = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "browser detached":
                detached.set()

    watch = Watch()
    logging.getLogger("terminal_proxy.session").addHandler(watch)
    try:
        drop(on_b)
        await asyncio.wait_for(detached.wait(), 10)
    finally:
        logging.getLogger("terminal_proxy.session").removeHandler(watch)
    assert b.app[GATEWAY].registry.detached() == 1
    # b renews (its count), then a (which reads every replica's count).
    for server in (b, a):
        await agent_of(server).heartbeat()
    client = redis_server.client()
    try:
        phases = {s.replica: s.phase for s in await list_sessions(client)}
    finally:
        await client.aclose()
    assert phases == {"a": "attached", "b": "detached"}
    text = a.app[GATEWAY].metrics.render().decode()
    assert "terminal_proxy_cluster_redis_up 1.0" in text
    assert 'terminal_proxy_cluster_sessions{replica="a"} 1.0' in text
    assert 'terminal_proxy_cluster_sessions{replica="b"} 1.0' in text
    await on_a.ws.close()


async def test_a_detached_session_makes_room_under_the_global_limit(
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """Per-user limit 1: alice's detached session (browser gone) ends to make room for her
    new one, as on a single replica; its lease is released before the new admission."""
    native_user(auth_api, "alice")
    server = await replica(make_gateway, redis_server, "a", limits={"max_sessions_per_user": 1})
    first = await opened(browser, server)
    detached = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "browser detached":
                detached.set()

    watch = Watch()
    logging.getLogger("terminal_proxy.session").addHandler(watch)
    try:
        drop(first)
        await asyncio.wait_for(detached.wait(), 10)
    finally:
        logging.getLogger("terminal_proxy.session").removeHandler(watch)
    second = await opened(browser, server)
    await echo_term(second, "room")
    client = redis_server.client()
    try:
        assert [s.id for s in await list_sessions(client)] == [
            second.hello and second.hello.session
        ]
    finally:
        await client.aclose()
    await second.ws.close()


async def test_a_burst_of_admissions_waits_for_connections_and_takes_one_round_trip_each(
    redis_server: RedisServer,
) -> None:
    """300 admissions at once share the client's bounded pool (none fails for want of a
    connection) and each is exactly one round trip; the limit holds exactly."""
    config = load_config(f"cluster:\n  redis_url: {redis_server.url}\n").cluster
    client = connect(config)
    admitted: list[Claim] = []
    counts = RedisCounts(
        client,
        replica_id="a",
        lease=15,
        on_redis_down="refuse",
        healthy=lambda: True,
        failed=lambda exc: pytest.fail(f"Redis failed: {exc!r}"),
        admitted=admitted.append,
        released=lambda claim: None,
        settle=lambda: asyncio.sleep(0),
    )

    async def attempt(i: int) -> int:
        try:
            await counts.admit(Claim(f"a.{i:016x}", f"user:u{i % 3}", "r", 250, 0))
        except LimitReached as exc:
            assert exc.limit == "sessions"
            return 503
        return 0

    try:
        results = await asyncio.gather(*(attempt(i) for i in range(300)))
    finally:
        await client.aclose()
    assert results.count(0) == len(admitted) == 250
    assert results.count(503) == 50
    assert counts.round_trips == 300


async def test_handshake_rates_hold_across_replicas(
    redis_server: RedisServer,
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """A burst of 2 per client and per user, three replicas: two terminals in all, then
    429 with Retry-After on every replica (each alone would still have tokens)."""
    native_user(auth_api, "alice")
    limits = {
        "client_handshake_rate": 0.01,
        "client_handshake_burst": 2,
        "user_handshake_rate": 0.01,
        "user_handshake_burst": 3,
    }
    servers = [await replica(make_gateway, redis_server, n, limits=limits) for n in "abc"]
    first = await opened(browser, servers[0])
    second = await opened(browser, servers[1])
    for server in servers:
        status, body, headers = await raw_handshake(
            browser, str(server.make_url(ENV_PATH)), protocols=TERMINAL_PROXY
        )
        assert status == 429 and "from your address" in body, (status, body)
        assert int(headers["Retry-After"]) >= 1
    client = redis_server.client()
    try:
        assert await client.exists("terminal-proxy:rate:client:127.0.0.1") == 1
    finally:
        await client.aclose()
    await first.ws.close()
    await second.ws.close()
