"""The authorization API client under a stampede: requests queue in the gateway, not in
the HTTP pool, and re-polls never take every connection from new sessions."""

from __future__ import annotations

import asyncio

from terminal_proxy.authorization import BrowserRequest, Grant
from terminal_proxy.authorization.gitlab import GitLabAuthorizer
from terminal_proxy.authorization.http import MAX_CONNECTIONS, MAX_REPOLLS, new_client
from tests.conftest import ENV_PATH, Kube, make_config
from tests.fakes.auth_api import FakeAuthApi


def _request(kind: str) -> BrowserRequest:
    return BrowserRequest(ENV_PATH, f"kind={kind}", (("Cookie", "_gitlab_session=abc"),))


async def test_repolls_queue_and_leave_room_for_new_sessions(
    auth_api: FakeAuthApi, kube: Kube, secret: bytes
) -> None:
    config = make_config(auth_api.url, secret, [kube.host_port]).authorization
    authorizer = GitLabAuthorizer(config, new_client(config))
    try:
        grant = await authorizer.authorize(_request("first"))
        assert isinstance(grant, Grant)
        auth_api.set_mode("stall")
        # Far more re-polls than connections fall due at once (a ramp of sessions opened
        # together, re-polled together).
        repolls = [
            asyncio.ensure_future(authorizer.reauthorize(_request("repoll"), grant))
            for _ in range(10 * MAX_CONNECTIONS)
        ]
        await auth_api.wait_requests(1 + MAX_REPOLLS)
        # New sessions still get the rest of the connections.
        new = [
            asyncio.ensure_future(authorizer.authorize(_request("new")))
            for _ in range(MAX_CONNECTIONS)
        ]
        await auth_api.wait_requests(1 + MAX_CONNECTIONS)
        assert auth_api.in_flight == {
            "kind=first": 0,
            "kind=repoll": MAX_REPOLLS,
            "kind=new": MAX_CONNECTIONS - MAX_REPOLLS,
        }
        auth_api.set_mode("ok")
        answers = await asyncio.gather(*repolls, *new)
        # Every one answered: none failed on a pool timeout while it waited its turn.
        assert all(isinstance(answer, Grant) for answer in answers)
        assert len(auth_api.requests) == 1 + 11 * MAX_CONNECTIONS
        assert auth_api.max_in_flight["kind=repoll"] == MAX_REPOLLS
        assert auth_api.max_total_in_flight == MAX_CONNECTIONS
    finally:
        await authorizer.aclose()


async def test_a_cookie_the_api_sets_never_rides_along_with_the_next_request(
    auth_api: FakeAuthApi, kube: Kube, secret: bytes
) -> None:
    """The client keeps no cookie jar: each request carries the browser's cookies only
    (the API named by host name, as in production: jars keep no cookies of IP hosts)."""
    backend = auth_api.url.replace("127.0.0.1", "localhost")
    config = make_config(backend, secret, [kube.host_port]).authorization
    authorizer = GitLabAuthorizer(config, new_client(config))
    auth_api.set_cookie = "api_session=alice-only; Path=/"
    try:
        assert isinstance(await authorizer.authorize(_request("alice")), Grant)
        other = BrowserRequest(ENV_PATH, "kind=bob", (("Cookie", "_gitlab_session=bob"),))
        assert isinstance(await authorizer.authorize(other), Grant)
        assert auth_api.requests[1].headers["cookie"] == ["_gitlab_session=bob"]
    finally:
        await authorizer.aclose()
