"""Everything that happens before the browser is upgraded: statuses and bodies."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import ENV_PATH, JOB_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import open_term, raw_handshake


def url(server: TestServer, path: str = ENV_PATH) -> str:
    return str(server.make_url(path))


async def test_plain_http_on_terminal_route_explains_missing_headers(
    gateway: TestServer, browser: aiohttp.ClientSession
) -> None:
    """A plain GET gets 400 naming both headers and the reverse-proxy hint."""
    async with browser.get(url(gateway)) as resp:
        body = await resp.text()
    assert resp.status == 400
    assert "'Connection: upgrade'" in body and "'Upgrade: websocket'" in body
    assert "reverse proxy" in body
    assert "request id:" in body


async def test_stripped_connection_header_is_named_alone(
    gateway: TestServer, browser: aiohttp.ClientSession
) -> None:
    """A proxy that passes Upgrade but drops Connection gets exactly that named."""
    status, body, _ = await raw_handshake(browser, url(gateway), connection=False)
    assert status == 400
    assert "'Connection: upgrade'" in body and "'Upgrade: websocket'" not in body


async def test_upgrade_on_other_path_is_refused(
    gateway: TestServer, browser: aiohttp.ClientSession, auth_api: FakeAuthApi
) -> None:
    """A WebSocket upgrade anywhere else gets 400 'websocket upgrade not allowed'."""
    status, body, _ = await raw_handshake(browser, url(gateway, "/group/project/-/pipelines"))
    assert status == 400
    assert "websocket upgrade not allowed" in body
    assert auth_api.requests == []


async def test_no_supported_subprotocol_lists_supported(
    gateway: TestServer, browser: aiohttp.ClientSession, auth_api: FakeAuthApi
) -> None:
    """Offering only unknown subprotocols gets 400 listing the ones we speak."""
    status, body, _ = await raw_handshake(browser, url(gateway), protocols="chat, superchat")
    assert status == 400
    for name in ("terminal.gitlab.com", "v5.channel.k8s.io", "base64.channel.k8s.io"):
        assert name in body
    assert auth_api.requests == []


async def test_no_subprotocol_at_all_is_refused(
    gateway: TestServer, browser: aiohttp.ClientSession
) -> None:
    """A browser offering no subprotocol gets 400 too."""
    status, body, _ = await raw_handshake(browser, url(gateway), protocols=None)
    assert status == 400 and "supported" in body


async def test_wrong_websocket_version(gateway: TestServer, browser: aiohttp.ClientSession) -> None:
    """Sec-WebSocket-Version other than 13 gets 400 naming it."""
    status, body, _ = await raw_handshake(
        browser, url(gateway), headers={"Sec-WebSocket-Version": "8"}
    )
    assert status == 400 and "Sec-WebSocket-Version" in body


@pytest.mark.parametrize(
    ("origin", "allowed", "status"),
    [
        ("https://evil.example", [], 403),
        ("http://{host}", [], 101),
        ("https://gitlab.example.com", ["https://gitlab.example.com"], 101),
        ("https://other.example.com", ["https://gitlab.example.com"], 403),
        ("null", [], 403),
    ],
)
async def test_origin_check(
    make_gateway: GatewayFactory,
    browser: aiohttp.ClientSession,
    origin: str,
    allowed: list[str],
    status: int,
) -> None:
    """Same origin or an allowlisted origin passes; anything else gets 403."""
    server = await make_gateway(browser={"allowed_origins": allowed})
    origin = origin.format(host=f"{server.host}:{server.port}")
    got, body, _ = await raw_handshake(browser, url(server), headers={"Origin": origin})
    assert got == status, body
    if status == 403:
        assert "origin not allowed" in body


@pytest.mark.parametrize("deny_status", [401, 403, 404])
async def test_authorization_refusal_is_passed_back(
    gateway: TestServer,
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    deny_status: int,
) -> None:
    """The API's status, body and WWW-Authenticate reach the browser; nothing is dialled."""
    auth_api.set_mode("deny")
    auth_api.deny_status = deny_status
    status, body, headers = await raw_handshake(browser, url(gateway))
    assert status == deny_status
    assert body == "You are not allowed to open this terminal"
    assert headers["WWW-Authenticate"] == 'Bearer realm="gitlab"'
    assert kube.sessions == []


async def test_redirect_is_passed_back_not_followed(
    gateway: TestServer, browser: aiohttp.ClientSession, auth_api: FakeAuthApi
) -> None:
    """A 302 from the API reaches the browser with its Location; it is not followed."""
    auth_api.set_mode("redirect")
    status, _, headers = await raw_handshake(browser, url(gateway))
    assert status == 302
    assert headers["Location"] == "/users/sign_in"
    assert len(auth_api.requests) == 1


async def test_huge_refusal_body_is_bounded(
    gateway: TestServer, browser: aiohttp.ClientSession, auth_api: FakeAuthApi
) -> None:
    """A refusal body over the limit keeps its status but not its bulk."""
    auth_api.set_mode("huge")
    status, body, _ = await raw_handshake(browser, url(gateway))
    assert status == 403
    assert len(body) < 1000 and "over" in body


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_authorization_api_down_is_502(
    make_gateway: GatewayFactory, browser: aiohttp.ClientSession
) -> None:
    """An unreachable API gives 502 with the reason."""
    server = await make_gateway(authorization={"backend": f"http://127.0.0.1:{_closed_port()}"})
    status, body, _ = await raw_handshake(browser, url(server))
    assert status == 502 and "authorization API unreachable" in body


async def test_authorization_api_timeout_is_504(
    make_gateway: GatewayFactory, browser: aiohttp.ClientSession, auth_api: FakeAuthApi
) -> None:
    """An API that does not answer within authorization.timeout gives 504."""
    server = await make_gateway(authorization={"timeout": "300ms"})
    auth_api.set_mode("stall")
    status, body, _ = await raw_handshake(browser, url(server))
    assert status == 504 and "timed out" in body


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("malformed", "malformed JSON"),
        ("bad_details", "Channel.Url must use ws:// or wss://"),
        ("wrong_content_type", "content type 'text/html'"),
    ],
)
async def test_invalid_authorization_answer_is_502_naming_it(
    gateway: TestServer,
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    mode: str,
    expected: str,
) -> None:
    """Malformed JSON, invalid details and a wrong content type each give 502 saying so."""
    auth_api.set_mode(mode)
    status, body, _ = await raw_handshake(browser, url(gateway))
    assert status == 502
    assert expected in body


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("Subprotocols", [], "Channel.Subprotocols"),
        ("Header", {"Authorization": "Bearer x"}, "Channel.Header.Authorization"),
        ("Header", {"Upgrade": ["h2c"]}, "Channel.Header.Upgrade"),
        ("CAPem", "not a certificate", "Channel.CAPem"),
        ("MaxSessionTime", -1, "Channel.MaxSessionTime"),
        ("Url", "wss://user:pw@127.0.0.1:1/x", "Channel.Url"),
    ],
)
async def test_invalid_details_name_the_field(
    gateway: TestServer,
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    field: str,
    value: object,
    expected: str,
) -> None:
    """Each invalid Channel field gives 502 naming that field; nothing is dialled."""
    auth_api.channel = {**auth_api.channel, field: value}
    status, body, _ = await raw_handshake(browser, url(gateway))
    assert status == 502, body
    assert expected in body
    assert kube.sessions == []


async def test_upstream_not_on_allowlist_is_never_dialled(
    make_gateway: GatewayFactory,
    browser: aiohttp.ClientSession,
    kube: Kube,
) -> None:
    """A host:port off the allowlist gets 502 and the upstream sees no request at all."""
    server = await make_gateway(upstream={"allowed_hosts": ["kube.example.com:443"]})
    status, body, _ = await raw_handshake(browser, url(server))
    assert status == 502 and "allowlist" in body
    assert kube.requests == []


async def test_upstream_refused_is_502(
    gateway: TestServer,
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    make_gateway: GatewayFactory,
) -> None:
    """A closed upstream port gives 502 'upstream refused the connection'."""
    port = _closed_port()
    server = await make_gateway(upstream={"allowed_hosts": [f"127.0.0.1:{port}"]})
    auth_api.channel = {**auth_api.channel, "Url": f"wss://127.0.0.1:{port}/api/v1/x"}
    status, body, _ = await raw_handshake(browser, url(server))
    assert status == 502 and "refused the connection" in body


async def test_upstream_bad_ca_is_502_tls(
    gateway: TestServer, browser: aiohttp.ClientSession, auth_api: FakeAuthApi
) -> None:
    """An upstream certificate that does not chain to CAPem gives 502 naming TLS."""
    import trustme

    auth_api.channel = {**auth_api.channel, "CAPem": trustme.CA().cert_pem.bytes().decode()}
    status, body, _ = await raw_handshake(browser, url(gateway))
    assert status == 502 and "TLS verification failed" in body


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"Header": {"Authorization": ["Bearer wrong"]}}, "HTTP 401: Unauthorized"),
        ("missing-pod", 'HTTP 404: pods "nope" not found'),
    ],
)
async def test_upstream_rejection_carries_kube_status_message(
    gateway: TestServer,
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    change: object,
    expected: str,
) -> None:
    """A kube-apiserver 401/404 reaches the browser as 502 with the Status message."""
    if change == "missing-pod":
        auth_api.channel = {
            **auth_api.channel,
            "Url": kube.exec_url(pod="nope", container="main", command=["sh"], tty=True),
        }
    else:
        assert isinstance(change, dict)
        auth_api.channel = {**auth_api.channel, **change}
    status, body, _ = await raw_handshake(browser, url(gateway))
    assert status == 502
    assert expected in body


async def test_authorize_request_follows_the_gitlab_contract(
    gateway: TestServer,
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
) -> None:
    """Path+/authorize, query, Host, cookies, signed JWT; no hop-by-hop headers."""
    term = await open_term(
        browser,
        url(gateway, JOB_PATH + "?foo=bar&x=1"),
        "terminal.gitlab.com",
        headers={"Cookie": "_gitlab_session=sekrit-cookie", "X-Csrf": "t"},
    )
    seen = auth_api.requests[0]
    assert seen.path == JOB_PATH + "/authorize"
    assert seen.query == "foo=bar&x=1"
    assert seen.host == f"{gateway.host}:{gateway.port}"
    assert seen.jwt_ok
    assert seen.headers["cookie"] == ["_gitlab_session=sekrit-cookie"]
    assert seen.headers["x-csrf"] == ["t"]
    assert seen.headers["gitlab-workhorse"][0].startswith("terminal-proxy/")
    assert "upgrade" not in seen.headers
    # The client's own (HTTP/1.1 keep-alive), never the browser's "Upgrade".
    assert seen.headers.get("connection", ["keep-alive"]) == ["keep-alive"]
    assert "sec-websocket-key" in seen.headers  # kept, as Workhorse keeps it
    upstream = await kube.next_session()
    assert upstream.headers.get("Authorization") == f"Bearer {kube.token}"
    assert upstream.headers.get("X-Forwarded-For") == "127.0.0.1"
    assert "Cookie" not in upstream.headers
    await term.ws.close()
