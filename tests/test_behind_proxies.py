"""The gateway behind Debian's real nginx and HAProxy, running the shipped example configs.

Each proxy runs as a child process on a free 127.0.0.1 port in front of a real gateway
(with the fake kube-apiserver and authorization API behind it); the test is the browser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ENV_PATH, GatewayFactory, Kube, wait_for_stdin_end
from tests.support.proxies import HAProxy, Nginx, ProxyProcess, check_config
from tests.support.termclient import Term, open_term, raw_handshake

pytestmark = pytest.mark.proxies

KINDS = ["nginx", "haproxy"]
# The proxy's idle timeout in the keepalive tests, and how long the terminal then idles.
PROXY_TIMEOUT = 1.0
IDLE_FOR = 2.5 * PROXY_TIMEOUT


def proxy(
    kind: str,
    tmp_path: Path,
    gateway: str,
    *,
    timeout: float | None = None,
    pass_upgrade: bool = True,
    bind: str | None = None,
) -> ProxyProcess:
    workdir = tmp_path / kind
    if kind == "nginx":
        return Nginx(
            workdir,
            gateway,
            read_timeout=None if timeout is None else f"{int(timeout * 1000)}ms",
            pass_upgrade=pass_upgrade,
            bind=bind,
        )
    return HAProxy(
        workdir,
        gateway,
        tunnel_timeout=None if timeout is None else f"{int(timeout * 1000)}ms",
        pass_upgrade=pass_upgrade,
        bind=bind,
    )


async def start_gateway(make_gateway: GatewayFactory, **overrides: Any) -> str:
    server = await make_gateway(**overrides)
    return f"127.0.0.1:{server.port}"


async def echo(term: Term, word: str) -> None:
    await term.send_stdin(f"echo {word}\r".encode())
    await term.read_until(f"\r\n{word}\r\n".encode())


@pytest.mark.parametrize("kind", KINDS)
async def test_example_config_passes_the_proxys_own_check(
    kind: str, tmp_path: Path, make_gateway: GatewayFactory
) -> None:
    """`nginx -t` / `haproxy -c` accept the shipped example (addresses filled in)."""
    await check_config(proxy(kind, tmp_path, await start_gateway(make_gateway)))


@pytest.mark.parametrize("kind", KINDS)
async def test_terminal_works_through_proxy(
    kind: str,
    tmp_path: Path,
    make_gateway: GatewayFactory,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """Typing, output, resize and a clean close, through the proxy."""
    async with proxy(kind, tmp_path, await start_gateway(make_gateway)) as front:
        term = await open_term(browser, front.url + ENV_PATH, "v4.channel.k8s.io")
        session = await kube.next_session()
        await echo(term, f"through-{kind}")
        await term.resize(120, 40)
        await session.wait_for_resize(120, 40)
        await term.ws.close()
        await wait_for_stdin_end(session)
        await session.wait_closed()
        assert session.client_close_code == 1000


@pytest.mark.parametrize("kind", KINDS)
async def test_proxy_not_passing_upgrade_gets_our_400(
    kind: str, tmp_path: Path, make_gateway: GatewayFactory, browser: aiohttp.ClientSession
) -> None:
    """Connection/Upgrade not passed on (terminals switched off): our 400 says why."""
    gateway = await start_gateway(make_gateway)
    async with proxy(kind, tmp_path, gateway, pass_upgrade=False) as front:
        status, body, _ = await raw_handshake(browser, front.url + ENV_PATH)
    assert status == 400, body
    assert "'Upgrade: websocket'" in body
    assert "it must pass on Connection and Upgrade" in body
    assert "request id:" in body


@pytest.mark.parametrize("kind", KINDS)
async def test_idle_terminal_outlives_the_proxy_timeout(
    kind: str, tmp_path: Path, make_gateway: GatewayFactory, browser: aiohttp.ClientSession
) -> None:
    """With the proxy's idle timeout at 1s, keepalive pings keep an idle terminal open."""
    gateway = await start_gateway(
        make_gateway, browser={"ping_interval": "250ms", "pong_timeout": "2s"}
    )
    async with proxy(kind, tmp_path, gateway, timeout=PROXY_TIMEOUT) as front:
        term = await open_term(browser, front.url + ENV_PATH, "terminal.gitlab.com")
        await echo(term, "before-idle")
        # Idling past the proxy's timeout is the behaviour under test, not a synchronisation.
        # Reading meanwhile answers pings (and would notice a close at once).
        with pytest.raises(TimeoutError):
            await term.wait_closed(timeout=IDLE_FOR)
        await echo(term, "after-idle")
        await term.ws.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_idle_terminal_without_keepalive_is_cut_by_the_proxy(
    kind: str, tmp_path: Path, make_gateway: GatewayFactory, browser: aiohttp.ClientSession
) -> None:
    """The control: with browser pings off, the same proxy timeout cuts the terminal."""
    gateway = await start_gateway(make_gateway, browser={"ping_interval": 0})
    async with proxy(kind, tmp_path, gateway, timeout=PROXY_TIMEOUT) as front:
        term = await open_term(browser, front.url + ENV_PATH, "terminal.gitlab.com")
        await echo(term, "before-idle")
        code, _ = await term.wait_closed(timeout=10 * PROXY_TIMEOUT)
        assert code in (1006, None), code


@pytest.mark.parametrize("kind", KINDS)
async def test_forwarded_for_is_trusted_from_the_proxy_only(
    kind: str,
    tmp_path: Path,
    make_gateway: GatewayFactory,
    kube: Kube,
) -> None:
    """The proxy (127.0.0.2, trusted) is believed about its client (127.0.0.3); a client
    talking to the gateway directly is not believed about anything, nor is a spoofed
    X-Forwarded-For the client sent through the proxy."""
    audit = tmp_path / "audit.jsonl"
    server = await make_gateway(
        browser={"trusted_proxies": ["127.0.0.2/32"]},
        audit={"enabled": True, "file": str(audit)},
    )
    spoof = {"X-Forwarded-For": "198.51.100.7"}
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        proxy(kind, tmp_path, f"127.0.0.1:{server.port}", bind="127.0.0.2") as front,
    ):
        via_proxy = await open_term(client, front.url + ENV_PATH, "terminal.gitlab.com")
        upstream = await kube.next_session()
        assert upstream.headers["X-Forwarded-For"] == "127.0.0.3, 127.0.0.2"
        await echo(via_proxy, "proxied")

        spoofed = await open_term(
            client, front.url + ENV_PATH, "terminal.gitlab.com", headers=spoof
        )
        upstream = await kube.next_session()
        assert upstream.headers["X-Forwarded-For"] == "198.51.100.7, 127.0.0.3, 127.0.0.2"
        await echo(spoofed, "spoofed")

        direct = await open_term(
            client, str(server.make_url(ENV_PATH)), "terminal.gitlab.com", headers=spoof
        )
        upstream = await kube.next_session()
        assert upstream.headers["X-Forwarded-For"] == "127.0.0.3"
        await echo(direct, "direct")
        for term in (via_proxy, spoofed, direct):
            await term.ws.close()
    opened = [json.loads(line) for line in audit.read_text().splitlines()]
    opened = [event for event in opened if event["event"] == "session_open"]
    assert [event["client"] for event in opened] == ["127.0.0.3"] * 3


def test_missing_proxy_binary_fails_rather_than_skips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without nginx/haproxy on PATH the tests fail with the install hint."""
    import shutil

    from tests.support import proxies

    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(AssertionError, match="scripts/install-proxies"):
        proxies.binary("nginx")
