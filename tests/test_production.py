"""Limits, metrics and the audit trail, against the real gateway and its fakes."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from terminal_proxy.app import GATEWAY
from terminal_proxy.protocols import TERMINAL_PROXY
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.logcapture import remember_secret
from tests.support.termclient import Term, drop, open_term, raw_handshake, resume_term, wait_hello


def sessions_ended(count: int) -> AbstractContextManager[asyncio.Event]:
    """An event set once ``count`` "session ended" lines were logged (metrics and audit
    are written in the same step, just before and after that line)."""
    return logged("session ended", count)


@contextmanager
def logged(prefix: str, count: int = 1) -> Iterator[asyncio.Event]:
    """An event set once ``count`` session log lines starting with ``prefix`` were logged."""
    done = asyncio.Event()
    seen = 0

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            nonlocal seen
            if record.getMessage().startswith(prefix):
                seen += 1
                if seen >= count:
                    done.set()

    watch = Watch()
    logger = logging.getLogger("terminal_proxy.session")
    logger.addHandler(watch)
    try:
        yield done
    finally:
        logger.removeHandler(watch)


def use_native(auth_api: FakeAuthApi, username: str | None) -> None:
    """Switch the fake to the native contract, naming ``username`` (if any)."""
    channel = auth_api.channel
    auth_api.contract = "native"
    auth_api.user = {"username": username} if username else None
    auth_api.channel = {
        "url": channel["Url"],
        "subprotocols": channel["Subprotocols"],
        "headers": channel["Header"],
        "ca_pem": channel["CAPem"],
        "max_session_time": 0,
    }


async def echo(term: Term, word: str) -> None:
    await term.send_stdin(f"echo {word}\r".encode())
    await term.read_until(f"\r\n{word}\r\n".encode())


async def scrape(browser: aiohttp.ClientSession, server: TestServer) -> dict[str, float]:
    """The metrics listener's samples as {"name{labels}": value}."""
    url = server.app[GATEWAY].metrics_url
    assert url is not None
    async with browser.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.fixture
async def metered(make_gateway: GatewayFactory) -> AsyncIterator[GatewayFactory]:
    """make_gateway with a metrics listener on a free port."""

    async def make(**overrides: Any) -> TestServer:
        return await make_gateway(metrics={"listen": "127.0.0.1:0"}, **overrides)

    yield make


# --------------------------------------------------------------------------------------------
# Limits


async def test_total_limit_refuses_with_503_and_keeps_sessions(
    metered: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """Past limits.max_sessions: 503 + Retry-After + reason; live sessions are untouched."""
    server = await metered(limits={"max_sessions": 2, "retry_after": "7s"})
    url = str(server.make_url(ENV_PATH))
    terms = [await open_term(browser, url, "terminal.gitlab.com") for _ in range(2)]
    status, body, headers = await raw_handshake(browser, url)
    assert status == 503 and headers["Retry-After"] == "7"
    assert "limit of open terminals" in body and "request id:" in body
    for i, term in enumerate(terms):
        await echo(term, f"still-{i}")
    with sessions_ended(1) as ended:
        await terms[0].ws.close()
        async with asyncio.timeout(10):
            await ended.wait()
    third = await open_term(browser, url, "terminal.gitlab.com")
    await echo(third, "admitted")
    samples = await scrape(browser, server)
    assert samples['terminal_proxy_limited_total{limit="sessions"}'] == 1
    assert samples['terminal_proxy_handshakes_total{status="503"}'] == 1
    assert samples["terminal_proxy_sessions_active"] == 2
    for term in (terms[1], third):
        await term.ws.close()


async def test_per_user_limit_is_429(
    metered: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """limits.max_sessions_per_user counts the user the authorization names: 429 past it."""
    use_native(auth_api, "alice")
    server = await metered(
        authorization={"contract": "native"}, limits={"max_sessions_per_user": 1}
    )
    url = str(server.make_url(ENV_PATH))
    alice = await open_term(browser, url, "terminal.gitlab.com")
    status, body, headers = await raw_handshake(browser, url)
    assert status == 429 and headers["Retry-After"] == "5"
    assert "too many terminals open (limit 1)" in body
    auth_api.user = {"username": "bob"}
    bob = await open_term(browser, url, "terminal.gitlab.com")
    await echo(alice, "alice-ok")
    await echo(bob, "bob-ok")
    samples = await scrape(browser, server)
    assert samples['terminal_proxy_limited_total{limit="per_user"}'] == 1
    assert samples['terminal_proxy_authorizations_total{outcome="granted"}'] == 3
    await alice.ws.close()
    await bob.ws.close()


async def test_pending_handshake_limit_is_503(
    metered: GatewayFactory, auth_api: FakeAuthApi, browser: aiohttp.ClientSession
) -> None:
    """With one handshake stalled in authorization, the next is refused at once."""
    server = await metered(limits={"max_pending_handshakes": 1})
    url = str(server.make_url(ENV_PATH))
    auth_api.set_mode("stall")
    first = asyncio.create_task(open_term(browser, url, "terminal.gitlab.com"))
    try:
        await auth_api.wait_requests(1)
        status, body, headers = await raw_handshake(browser, url)
        assert status == 503 and headers["Retry-After"] == "5"
        assert "being opened at once" in body
        assert len(auth_api.requests) == 1  # refused before authorization
        auth_api.set_mode("ok")
        term = await first
    finally:
        first.cancel()
    await echo(term, "after-stall")
    samples = await scrape(browser, server)
    assert samples["terminal_proxy_handshakes_pending"] == 0
    await term.ws.close()


async def test_handshake_timeout_is_504(
    make_gateway: GatewayFactory, auth_api: FakeAuthApi, browser: aiohttp.ClientSession
) -> None:
    """A handshake past limits.handshake_timeout gets 504 naming the timeout."""
    server = await make_gateway(limits={"handshake_timeout": "300ms"})
    auth_api.set_mode("stall")
    status, body, _ = await raw_handshake(browser, str(server.make_url(ENV_PATH)))
    assert status == 504 and "handshake timeout" in body
    assert server.app[GATEWAY].registry.pending == 0


# --------------------------------------------------------------------------------------------
# Metrics


async def test_metrics_follow_sessions(
    metered: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """Sessions, bytes, authorization, dial and re-poll outcomes reach /metrics."""
    server = await metered(authorization={"poll_interval": "200ms"})
    other = await metered()  # a second app in the same process: its own registry
    url = str(server.make_url(ENV_PATH))
    term = await open_term(browser, url, "terminal.gitlab.com")
    await echo(term, "metered")
    samples = await scrape(browser, server)
    assert samples["terminal_proxy_sessions_active"] == 1
    assert samples["terminal_proxy_upstream_dial_seconds_count"] == 1
    assert samples["terminal_proxy_authorization_seconds_count"] == 1
    assert samples['terminal_proxy_handshakes_total{status="101"}'] == 1
    # Revocation on a re-poll: counted before the session closes with 4001.
    auth_api.set_mode("deny")
    with sessions_ended(1) as ended:
        assert (await term.wait_closed())[0] == 4001
        async with asyncio.timeout(10):
            await ended.wait()
    status, _, _ = await raw_handshake(browser, url)
    assert status == 403
    samples = await scrape(browser, server)
    assert samples["terminal_proxy_sessions_active"] == 0
    assert samples['terminal_proxy_sessions_ended_total{stop="revoked"}'] == 1
    assert samples['terminal_proxy_reauthorizations_total{outcome="revoked"}'] == 1
    assert samples['terminal_proxy_session_bytes_total{direction="in"}'] == len(b"echo metered\r")
    assert samples['terminal_proxy_session_bytes_total{direction="out"}'] > 0
    assert samples['terminal_proxy_authorizations_total{outcome="refused"}'] == 1
    assert samples['terminal_proxy_handshakes_total{status="403"}'] == 1
    assert samples["terminal_proxy_session_duration_seconds_count"] == 1
    assert "terminal_proxy_handshakes_total" not in str(await scrape(browser, other))


async def test_resumes_and_detached_sessions_are_counted(
    metered: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """A dropped v1.terminal-proxy session counts as detached until it is resumed; each
    resume attempt is counted by outcome."""
    server = await metered()
    url = str(server.make_url(ENV_PATH))
    term = await open_term(browser, url, TERMINAL_PROXY)
    await wait_hello(term)
    with logged("browser detached") as detached:
        drop(term)
        async with asyncio.timeout(10):
            await detached.wait()  # "browser detached session=… detail=…"
    samples = await scrape(browser, server)
    assert samples["terminal_proxy_sessions_detached"] == 1
    refused = await resume_term(browser, url, term, token="not-the-token")
    assert refused.close_code == 4009
    resumed = await resume_term(browser, url, term)
    assert resumed.hello is not None and resumed.hello.resumed
    samples = await scrape(browser, server)
    assert samples['terminal_proxy_resumes_total{outcome="resume_bad_token"}'] == 1
    assert samples['terminal_proxy_resumes_total{outcome="resumed"}'] == 1
    assert samples['terminal_proxy_resumes_total{outcome="resume_unknown"}'] == 0
    assert samples["terminal_proxy_sessions_detached"] == 0
    await resumed.ws.close()


async def test_dial_failures_are_counted(
    metered: GatewayFactory, auth_api: FakeAuthApi, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """A refused upstream and a host off the allowlist count as dial failures by reason."""
    server = await metered(upstream={"allowed_hosts": [kube.host_port, "127.0.0.1:1"]})
    url = str(server.make_url(ENV_PATH))
    good = auth_api.channel["Url"]
    auth_api.channel["Url"] = re.sub(r"//[^/]+/", "//127.0.0.1:1/", good)
    assert (await raw_handshake(browser, url))[0] == 502
    auth_api.channel["Url"] = re.sub(r"//[^/]+/", "//kube.invalid:443/", good)
    assert (await raw_handshake(browser, url))[0] == 502
    samples = await scrape(browser, server)
    assert samples['terminal_proxy_upstream_dial_failures_total{reason="refused"}'] == 1
    assert samples['terminal_proxy_upstream_dial_failures_total{reason="not_allowed"}'] == 1
    assert samples['terminal_proxy_handshakes_total{status="502"}'] == 2


async def test_metrics_listener_serves_probes_and_nothing_else(
    metered: GatewayFactory, browser: aiohttp.ClientSession
) -> None:
    """/-/health and /-/readiness answer on the metrics port; terminals are not served there."""
    server = await metered()
    base = server.app[GATEWAY].metrics_url
    assert base is not None
    async with browser.get(base + "/-/readiness") as resp:
        assert resp.status == 200
    async with browser.get(base + "/-/health") as resp:
        assert resp.status == 200
    async with browser.get(base + ENV_PATH) as resp:
        assert resp.status == 404


# --------------------------------------------------------------------------------------------
# Audit


async def test_audit_events_for_open_and_end(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """One JSON line at open and one at end: who, from where, target, protocols, bytes."""
    use_native(auth_api, "alice")
    audit = tmp_path / "audit.jsonl"
    server = await make_gateway(
        authorization={"contract": "native"}, audit={"enabled": True, "file": str(audit)}
    )
    cookie = "_gitlab_session=audit-must-not-see-this-cookie"
    remember_secret("audit-must-not-see-this-cookie")
    with sessions_ended(1) as ended:
        term = await open_term(
            browser,
            str(server.make_url(ENV_PATH)),
            "terminal.gitlab.com",
            headers={"X-Forwarded-For": "203.0.113.9", "Cookie": cookie},
        )
        await echo(term, "audited")
        await term.ws.close()
        async with asyncio.timeout(10):
            await ended.wait()
    text = audit.read_text()
    assert kube.token not in text and "audit-must-not-see-this-cookie" not in text
    opened, end = (json.loads(line) for line in text.splitlines())
    assert opened["event"] == "session_open" and end["event"] == "session_end"
    assert opened["session"] == end["session"]
    for event in (opened, end):
        assert event["user"] == "alice" and event["client"] == "203.0.113.9"
        assert event["upstream"] == kube.host_port
        assert event["namespace"] == "default" and event["pod"] == "mypod"
        assert event["browser_protocol"] == "terminal.gitlab.com"
        assert event["upstream_protocol"] == "v5.channel.k8s.io"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
    assert end["stop"] == "browser_left" and end["bytes_in"] == len(b"echo audited\r")
    assert end["bytes_out"] > 0 and end["duration_s"] >= 0


async def test_audit_is_off_by_default(gateway: TestServer, browser: aiohttp.ClientSession) -> None:
    """Without audit.enabled nothing is written."""
    audit = gateway.app[GATEWAY].services().audit
    assert audit is not None and not audit.enabled
