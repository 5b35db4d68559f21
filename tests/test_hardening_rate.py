"""Issue 11, item 4: handshake rate limits per client address and per user.

A reconnect storm from one address is refused with 429 and Retry-After before the
authorization API is asked; a user opening terminals too fast is refused after the
grant, before any upstream dial. Bucket memory stays bounded.
"""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer

from terminal_proxy.ratelimit import RateLimiter, client_key
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import open_term, raw_handshake


def url(server: TestServer) -> str:
    return str(server.make_url(ENV_PATH))


async def test_reconnect_storm_from_one_address_gets_429_before_authorization(
    make_gateway: GatewayFactory, auth_api: FakeAuthApi, browser: aiohttp.ClientSession
) -> None:
    auth_api.set_mode("deny")  # every handshake that gets through is answered quickly
    gateway = await make_gateway(limits={"client_handshake_rate": 0.1, "client_handshake_burst": 3})
    statuses = []
    for _ in range(10):
        status, body, headers = await raw_handshake(browser, url(gateway))
        statuses.append(status)
    assert statuses[:3] == [403, 403, 403]
    assert set(statuses[3:]) == {429}
    assert len(auth_api.requests) == 3
    status, body, headers = await raw_handshake(browser, url(gateway))
    assert status == 429
    assert "too many terminals opened from your address" in body
    # One token every 10 s: the browser is told when to come back.
    assert 1 <= int(headers["Retry-After"]) <= 10
    assert headers["Connection"] == "close"


async def test_user_opening_terminals_too_fast_gets_429_after_the_grant(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    gateway = await make_gateway(limits={"user_handshake_rate": 0.1, "user_handshake_burst": 1})
    term = await open_term(browser, url(gateway), "terminal.gitlab.com")
    await kube.next_session()
    status, body, headers = await raw_handshake(browser, url(gateway))
    assert status == 429
    assert "you are opening terminals too fast" in body
    assert int(headers["Retry-After"]) >= 1
    # Authorized (the user is known only then), never dialled.
    assert len(auth_api.requests) == 2
    assert len(kube.sessions) == 1
    await term.ws.close()


def test_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0])
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") == 0.5
    now[0] += 0.5
    assert limiter.take("a") == 0
    assert limiter.take("b") == 0  # other keys have their own bucket


def test_bucket_memory_is_bounded() -> None:
    """Refilled buckets are evicted; past max_keys the least recently used go."""
    now = [0.0]
    limiter = RateLimiter(1.0, 5, max_keys=100, clock=lambda: now[0])
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    now[0] += 5.0  # every bucket has refilled: a full bucket is the same as none
    limiter.take("fresh")
    assert len(limiter) == 1


def test_ipv6_clients_share_their_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"
