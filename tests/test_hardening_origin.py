"""Issue 11, item 8: the same-origin check compares the scheme, and ``browser.allowed_hosts``
stops DNS rebinding.

The attacks as found: on a plain-http listener, ``Origin: https://<host:port>`` and
``Origin: chrome-extension://<host:port>`` passed the same-origin check (only host:port
was compared); a page on the attacker's own name resolving to the gateway (DNS
rebinding: Host = Origin = the attacker's name) passed it too.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer

from terminal_proxy.config import HostPattern, ListenAddress
from terminal_proxy.demo import demo_hosts
from tests.conftest import ENV_PATH, GatewayFactory
from tests.fakes.auth_api import FakeAuthApi
from tests.support.rawhttp import ask, raw_request

TARGET = ENV_PATH.encode()


def own(server: TestServer) -> str:
    return f"{server.host}:{server.port}"


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://{own}", 101),
        ("https://{own}", 403),
        ("chrome-extension://{own}", 403),
        ("ws://{own}", 403),
        ("HTTP://{own}", 101),
    ],
)
async def test_same_origin_compares_the_scheme(
    gateway: TestServer, auth_api: FakeAuthApi, origin: str, status: int
) -> None:
    origin = origin.format(own=own(gateway))
    answer = await ask(gateway, TARGET, [(b"Origin", origin.encode())])
    assert answer.status == status, answer
    if status == 403:
        assert "origin not allowed" in answer.body
        assert auth_api.requests == []


@pytest.mark.parametrize(
    ("proto", "origin", "status"),
    [
        (b"https", "https://{own}", 101),
        (b"https", "http://{own}", 403),
        (b"http", "https://{own}", 403),
        # The trusted proxy's own value is the last one; a browser's is in front of it.
        (b"http, https", "https://{own}", 101),
        (b"https, http", "https://{own}", 403),
        (b"gopher", "https://{own}", 403),
    ],
)
async def test_trusted_proxy_tells_the_scheme(
    gateway: TestServer, proto: bytes, origin: str, status: int
) -> None:
    """Behind a proxy that terminates TLS (127.0.0.1 is a trusted proxy by default), its
    X-Forwarded-Proto is the scheme the browser used."""
    origin = origin.format(own=own(gateway))
    extra = [(b"Origin", origin.encode()), (b"X-Forwarded-Proto", proto)]
    answer = await ask(gateway, TARGET, extra)
    assert answer.status == status, answer


async def test_untrusted_peer_cannot_claim_https(
    make_gateway: GatewayFactory, auth_api: FakeAuthApi
) -> None:
    """X-Forwarded-Proto from a peer that is not a trusted proxy is ignored."""
    server = await make_gateway(browser={"trusted_proxies": ["10.0.0.0/8"]})
    extra = [(b"Origin", f"https://{own(server)}".encode()), (b"X-Forwarded-Proto", b"https")]
    answer = await ask(server, TARGET, extra)
    assert answer.status == 403
    assert auth_api.requests == []


async def test_dns_rebinding_is_refused_by_allowed_hosts(
    make_gateway: GatewayFactory, auth_api: FakeAuthApi
) -> None:
    """Host = Origin = the attacker's name passes the same-origin check; the Host
    allowlist refuses it with 421 before anything is asked or dialled."""
    server = await make_gateway(browser={"allowed_hosts": ["127.0.0.1", "localhost"]})
    evil = f"rebind.attacker.example:{server.port}".encode()
    answer = await ask(server, TARGET, [(b"Origin", b"http://" + evil)], host=evil)
    assert answer.status == 421, answer
    assert "browser.allowed_hosts" in answer.body and "request id:" in answer.body
    assert auth_api.requests == []
    # The gateway's own names still work.
    for host in (own(server), f"localhost:{server.port}", f"LOCALHOST.:{server.port}"):
        origin = f"http://{host}".encode()
        answer = await ask(server, TARGET, [(b"Origin", origin)], host=host.encode())
        assert answer.status == 101, (host, answer)


@pytest.mark.parametrize(
    "host",
    [b"", b"127.0.0.1.attacker.example", b"127.0.0.1@attacker.example", b"attacker/127.0.0.1"],
)
async def test_odd_host_headers_are_refused(make_gateway: GatewayFactory, host: bytes) -> None:
    server = await make_gateway(browser={"allowed_hosts": ["127.0.0.1"]})
    answer = await ask(server, TARGET, host=host or b" ")
    assert answer.status in (400, 421), answer
    assert answer.status != 101


async def test_allowed_host_with_port_is_exact(make_gateway: GatewayFactory) -> None:
    """``host:port`` allows that port only; a Host without port means the default one."""
    server = await make_gateway(browser={"allowed_hosts": ["gitlab.example.com:8181"]})
    assert (await ask(server, TARGET, host=b"gitlab.example.com:8181")).status == 101
    assert (await ask(server, TARGET, host=b"gitlab.example.com:8182")).status == 421
    assert (await ask(server, TARGET, host=b"gitlab.example.com")).status == 421
    server = await make_gateway(browser={"allowed_hosts": ["gitlab.example.com:80"]})
    assert (await ask(server, TARGET, host=b"gitlab.example.com")).status == 101


async def test_probes_are_not_host_checked(make_gateway: GatewayFactory) -> None:
    """Kubernetes probes use the pod address as Host: health stays answered."""
    server = await make_gateway(browser={"allowed_hosts": ["gitlab.example.com"]})
    assert server.port is not None
    head = b"GET /-/health HTTP/1.1\r\nHost: 10.1.2.3:8181\r\nConnection: close\r\n\r\n"
    answer = await raw_request(server.host, server.port, head)
    assert answer.status == 200


def test_demo_allows_only_this_machine_names() -> None:
    local = demo_hosts(ListenAddress("127.0.0.1", 8181))
    assert HostPattern("localhost", None) in local and HostPattern("127.0.0.1", None) in local
    assert not any(p.matches("attacker.example", 8181) for p in local)
    lan = demo_hosts(ListenAddress("192.168.1.5", 8181))
    assert any(p.matches("192.168.1.5", 8181) for p in lan)
    assert demo_hosts(ListenAddress("0.0.0.0", 8181)) == ()
