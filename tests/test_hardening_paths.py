"""Issue 11, item 9: a path never leaves the backend's path prefix on its way to the
authorization API.

``/../../admin/terminal.ws`` used to be normalized (by httpx) into ``/admin/...``,
escaping a backend prefix such as ``/gitlab``. Now every path that some server in the
chain could normalize elsewhere (dot-segments raw or %-encoded, once or twice, encoded
slashes and backslashes, empty segments, backslashes, fragments) is refused with 400
before anything else, and the authorization API gets the path exactly as sent.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from terminal_proxy.authorization import BrowserRequest
from terminal_proxy.authorization.gitlab import GitLabAuthorizer
from terminal_proxy.authorization.http import new_client
from terminal_proxy.config import load_config
from terminal_proxy.errors import PathRejected
from tests.conftest import GatewayFactory
from tests.fakes.auth_api import FakeAuthApi
from tests.support.rawhttp import ask

PREFIX = "/gitlab"


@pytest.fixture
async def prefixed(make_gateway: GatewayFactory, auth_api: FakeAuthApi) -> TestServer:
    """A gateway whose authorization backend has a path prefix."""
    return await make_gateway(authorization={"backend": auth_api.url + PREFIX})


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (b"/../../admin/terminal.ws", "'..' segment"),
        (b"/group/../../admin/terminal.ws", "'..' segment"),
        (b"/group/%2e%2e/%2E%2E/admin/terminal.ws", "'..' segment"),
        (b"/group/.%2e/admin/terminal.ws", "'..' segment"),
        (b"/group/%252e%252e/admin/terminal.ws", "'..' segment"),
        (b"/group/./terminal.ws", "'.' or '..' segment"),
        (b"/group%2f..%2fadmin/terminal.ws", "encoded '/'"),
        (b"/group/%2F/terminal.ws", "encoded '/'"),
        (b"/group/..%5cadmin/terminal.ws", "encoded '/' or '\\'"),
        (b"//admin/terminal.ws", "empty segment"),
        (b"/group//terminal.ws", "empty segment"),
        (b"/group\\..\\admin/terminal.ws", "not allowed"),
        (b"/group/terminal.ws#x", "not allowed"),
        (b"/group/%zz/terminal.ws", "malformed %-escape"),
        (b"/group/%7f/terminal.ws", "encoded control character"),
        (b"/group/%01/terminal.ws", "encoded control character"),
    ],
)
async def test_path_tricks_are_refused_before_authorization(
    prefixed: TestServer, auth_api: FakeAuthApi, target: bytes, reason: str
) -> None:
    answer = await ask(prefixed, target)
    assert answer.status == 400, answer
    assert reason in answer.body
    assert "request id:" in answer.body
    assert auth_api.requests == []


async def test_path_reaches_the_api_exactly_as_sent(
    prefixed: TestServer, auth_api: FakeAuthApi
) -> None:
    """Harmless %-escapes are not decoded, re-encoded or normalized: the web app sees
    exactly the browser's path, under the prefix."""
    auth_api.set_mode("deny")
    target = "/gr%6fup/pro%C3%A9ject/-/environments/1/terminal.ws"
    answer = await ask(prefixed, target.encode())
    assert answer.status == 403
    assert [r.raw_path for r in auth_api.requests] == [PREFIX + target + "/authorize"]


async def test_query_does_not_count_as_path(prefixed: TestServer, auth_api: FakeAuthApi) -> None:
    """Dots in the query string are the web app's business, not a path trick."""
    auth_api.set_mode("deny")
    answer = await ask(prefixed, b"/group/project/-/environments/1/terminal.ws?next=../x")
    assert answer.status == 403
    assert (
        auth_api.requests[0].raw_path
        == PREFIX + "/group/project/-/environments/1/terminal.ws/authorize"
    )


async def test_authorizer_refuses_a_path_it_would_normalize() -> None:
    """Second line of defence: should a dot-segment path reach the HTTP authorizer, it is
    refused instead of being normalized out from under the prefix."""
    config = load_config("authorization: {backend: 'http://rails:8080/gitlab', contract: native}")
    authorizer = GitLabAuthorizer(config.authorization, new_client(config.authorization))
    try:
        good = BrowserRequest("/a/terminal.ws", "", headers=())
        assert authorizer.url_for(good).raw_path == "/gitlab/a/terminal.ws/authorize"
        with pytest.raises(PathRejected):
            authorizer.url_for(BrowserRequest("/../../admin/terminal.ws", "", headers=()))
    finally:
        await authorizer.aclose()
