"""The request checks of routes.py: pure functions of the request head, table-tested."""

from __future__ import annotations

import ipaddress
import re

import pytest
from multidict import CIMultiDict

from terminal_proxy.config import DEFAULT_ROUTES, HostPattern, RouteConfig
from terminal_proxy.errors import GatewayError, HostRejected, NotWebSocket, OriginRejected
from terminal_proxy.routes import (
    authority_of,
    check_host,
    check_origin,
    check_upgrade_headers,
    match_route,
    offered,
    request_scheme,
    snapshot,
    wants_upgrade,
)

UPGRADE = {
    "Connection": "keep-alive, Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/group/project/-/environments/1/terminal.ws", "environment"),
        ("/a/b/c/-/jobs/42/terminal.ws", "job"),
        ("/terminal.ws", "generic"),
        ("/x/y/terminal.ws", "generic"),
        ("/x/terminal.wsx", None),
        ("/-/health", None),
    ],
)
def test_routes_are_matched_in_order(path: str, route: str | None) -> None:
    found = match_route(DEFAULT_ROUTES, path)
    assert (None if found is None else found[0].name) == route


def test_a_match_carries_the_patterns_named_groups() -> None:
    pod = RouteConfig("pod", re.compile(r"^/k8s/(?P<namespace>[a-z]+)/(?P<pod>[a-z0-9-]+)\.ws\Z"))
    found = match_route((pod,), "/k8s/prod/web-1.ws")
    assert found is not None
    assert found[1] == (("namespace", "prod"), ("pod", "web-1"))


@pytest.mark.parametrize(
    ("headers", "wants"),
    [
        (UPGRADE, True),
        ({"Upgrade": "WebSocket"}, True),
        ({"Connection": "upgrade"}, True),
        ({"Connection": "keep-alive"}, False),
        ({}, False),
    ],
)
def test_wants_upgrade(headers: dict[str, str], wants: bool) -> None:
    assert wants_upgrade(CIMultiDict(headers)) is wants


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({}, None),
        ({"Connection": "keep-alive"}, "missing 'Connection: upgrade'"),
        ({"Upgrade": "h2c"}, "missing 'Upgrade: websocket'"),
        ({"Sec-WebSocket-Version": "8"}, "Sec-WebSocket-Version must be 13"),
        ({"Sec-WebSocket-Key": ""}, "Sec-WebSocket-Key header is missing"),
    ],
)
def test_upgrade_headers(change: dict[str, str], error: str | None) -> None:
    headers = CIMultiDict({**UPGRADE, **change})
    if error is None:
        check_upgrade_headers(headers)
        return
    with pytest.raises(NotWebSocket, match=re.escape(error)):
        check_upgrade_headers(headers)


def test_offered_subprotocols_keep_the_browsers_order_across_headers() -> None:
    headers = CIMultiDict([("Sec-WebSocket-Protocol", "a, b"), ("Sec-WebSocket-Protocol", " c ,")])
    assert offered(headers) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, (), True),
        ("http://gw.example:8181", (), True),
        ("http://GW.example:8181", (), True),
        # Same host and port, another scheme: not the same origin.
        ("https://gw.example:8181", (), False),
        ("chrome-extension://gw.example:8181", (), False),
        ("http://evil.example", (), False),
        ("http://evil.example", ("http://evil.example/",), True),
        ("http://evil.example", ("*",), True),
        ("not a url at all \x00", (), False),
    ],
)
def test_origin(origin: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    host = "gw.example:8181"
    authority = authority_of(host, "http")
    if ok:
        check_origin(origin, allowed, "http", authority, host)
    else:
        with pytest.raises(OriginRejected) as raised:
            check_origin(origin, allowed, "http", authority, host)
        assert isinstance(raised.value, GatewayError) and raised.value.status == 403


@pytest.mark.parametrize(
    ("remote", "proto", "scheme"),
    [
        ("10.0.0.2", "https", "https"),
        ("10.0.0.2", "http, https", "https"),
        ("10.0.0.2", "gopher", "http"),
        # Only a trusted proxy may say how the browser connected.
        ("203.0.113.9", "https", "http"),
    ],
)
def test_request_scheme(remote: str, proto: str, scheme: str) -> None:
    headers = CIMultiDict({"X-Forwarded-Proto": proto})
    assert request_scheme("http", remote, headers, (PROXY,)) == scheme


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("gw.example", True),
        ("gw.example:80", True),
        ("GW.example.", True),
        ("attacker.example", False),
        ("", False),
        ("gw.example@evil", False),
    ],
)
def test_host_allowlist(host: str, ok: bool) -> None:
    allowed = (HostPattern.parse("gw.example:80"),)
    if ok:
        assert check_host(host, allowed, "http") == ("gw.example", 80)
    else:
        with pytest.raises(HostRejected):
            check_host(host, allowed, "http")


PROXY = ipaddress.ip_network("10.0.0.0/8")


@pytest.mark.parametrize(
    ("remote", "xff", "client", "forwarded"),
    [
        ("203.0.113.9", None, "203.0.113.9", "203.0.113.9"),
        # An untrusted peer's X-Forwarded-For is ignored.
        ("203.0.113.9", "1.2.3.4", "203.0.113.9", "203.0.113.9"),
        # Through a trusted proxy: the last untrusted address is the client.
        ("10.0.0.2", "198.51.100.7, 10.0.0.5", "198.51.100.7", "198.51.100.7, 10.0.0.5, 10.0.0.2"),
    ],
)
def test_snapshot_works_out_the_client_through_trusted_proxies(
    remote: str, xff: str | None, client: str, forwarded: str
) -> None:
    headers = CIMultiDict({"Cookie": "a=b"})
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    request = snapshot(
        raw_path="/x/terminal.ws?resume=1",
        query_string="resume=1",
        headers=headers,
        remote=remote,
        trusted=(PROXY,),
        route="generic",
    )
    assert (request.client_ip, request.forwarded_for, request.peer) == (client, forwarded, remote)
    assert request.path == "/x/terminal.ws" and request.route == "generic"
    assert ("Cookie", "a=b") in request.headers
