"""Issue 11, item 7: hostile authorization answers get a 502 with a reason, never a 500.

Each test is the attack as found: ``max_session_time: NaN`` (no limit at all), a grant
that sets Host, Cookie, Origin or hop-by-hop/WebSocket headers for the upstream, JSON
nested 10,000 deep (RecursionError), control characters in header names and values. Both
contracts (GitLab and native) are attacked; nothing is ever dialled, and no traceback is
logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import open_term, raw_handshake

CONTRACTS = ("gitlab", "native")
# Where each contract keeps the fields under attack.
FIELDS = {
    "gitlab": {"time": "MaxSessionTime", "headers": "Header", "prefix": "Channel."},
    "native": {"time": "max_session_time", "headers": "headers", "prefix": "connection."},
}


@pytest.fixture(params=CONTRACTS)
async def setup(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory, auth_api: FakeAuthApi
) -> tuple[str, TestServer]:
    """A gateway speaking one contract, and a fake API answering a valid grant in it."""
    contract: str = request.param
    if contract == "native":
        channel = auth_api.channel
        auth_api.contract = "native"
        auth_api.channel = {
            "url": channel["Url"],
            "subprotocols": channel["Subprotocols"],
            "headers": channel["Header"],
            "ca_pem": channel["CAPem"],
            "max_session_time": 0,
        }
    server = await make_gateway(authorization={"contract": contract})
    return contract, server


def wrapped(contract: str, inner: bytes) -> bytes:
    """``inner`` as the connection details of a ``contract`` answer."""
    if contract == "gitlab":
        return b'{"Channel": ' + inner + b"}"
    return b'{"version": 1, "connection": ' + inner + b"}"


async def refused(
    server: TestServer, browser: aiohttp.ClientSession, kube: Kube, caplog: pytest.LogCaptureFixture
) -> str:
    """Open a terminal: it must be a 502, nothing dialled, no traceback; the body."""
    with caplog.at_level(logging.DEBUG):
        status, body, _ = await raw_handshake(browser, str(server.make_url(ENV_PATH)))
    assert status == 502, body
    assert kube.requests == []
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    return body


async def still_serves(
    server: TestServer, browser: aiohttp.ClientSession, auth_api: FakeAuthApi, channel: Any
) -> None:
    auth_api.raw_body = None
    auth_api.channel = channel
    term = await open_term(browser, str(server.make_url(ENV_PATH)), "terminal.gitlab.com")
    await term.send_stdin(b"echo fine\r")
    await term.read_until(b"\r\nfine\r\n")
    await term.ws.close()


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
async def test_non_finite_session_time_is_refused(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
    number: bytes,
) -> None:
    """``max_session_time: NaN`` used to mean no limit at all; now every non-finite number
    (also 1e999, which parses to infinity) is a 502 saying numbers must be finite."""
    contract, server = setup
    details = dict(auth_api.channel)
    details[FIELDS[contract]["time"]] = "@"
    auth_api.raw_body = wrapped(contract, json.dumps(details).encode().replace(b'"@"', number))
    body = await refused(server, browser, kube, caplog)
    assert "numbers must be finite" in body
    await still_serves(server, browser, auth_api, details | {FIELDS[contract]["time"]: 60})


async def test_non_finite_number_anywhere_is_refused(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A NaN in a field the gateway does not read is refused too (GitLab ignores unknown
    fields; they still must not carry non-numbers)."""
    contract, server = setup
    doc = json.loads(wrapped(contract, json.dumps(auth_api.channel).encode()))
    doc["Extra" if contract == "gitlab" else "user"] = {"id": "@"}
    auth_api.raw_body = json.dumps(doc).encode().replace(b'"@"', b"NaN")
    body = await refused(server, browser, kube, caplog)
    assert "non-finite number (NaN)" in body


@pytest.mark.parametrize("value", [-1, -0.5, -1e-9])
async def test_negative_session_time_is_refused(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
    value: float,
) -> None:
    contract, server = setup
    auth_api.channel = {**auth_api.channel, FIELDS[contract]["time"]: value}
    body = await refused(server, browser, kube, caplog)
    assert f"{FIELDS[contract]['time']} must not be negative" in body


async def test_negative_user_id_is_refused(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
) -> None:
    contract, server = setup
    if contract != "native":
        pytest.skip("only the native contract names a user")
    auth_api.user = {"id": -1}
    body = await refused(server, browser, kube, caplog)
    assert "user.id must not be negative" in body


@pytest.mark.parametrize(
    "header",
    [
        "Host",
        "Cookie",
        "Origin",
        "Connection",
        "Upgrade",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Protocol",
        "sec-websocket-anything",
        "Transfer-Encoding",
        "Content-Length",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Keep-Alive",
        "X-Forwarded-For",
    ],
)
async def test_grant_must_not_set_reserved_headers(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
    header: str,
) -> None:
    """A grant setting the browser's identity or a hop-by-hop/WebSocket header for the
    upstream is refused with 502 naming the header; nothing is dialled."""
    contract, server = setup
    key = FIELDS[contract]["headers"]
    auth_api.channel = {
        **auth_api.channel,
        key: {**auth_api.channel[key], header: ["attacker.example"]},
    }
    body = await refused(server, browser, kube, caplog)
    assert f"{FIELDS[contract]['prefix']}{key}.{header} must not be given" in body


@pytest.mark.parametrize("depth", [33, 10_000])
async def test_deeply_nested_json_is_refused(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
    depth: int,
) -> None:
    """JSON nested 10,000 deep used to crash the handler (RecursionError, 500)."""
    contract, server = setup
    original = dict(auth_api.channel)
    details = original | {"x" if contract == "gitlab" else "url": "@"}
    nested = b"[" * depth + b"]" * depth
    auth_api.raw_body = wrapped(contract, json.dumps(details).encode().replace(b'"@"', nested))
    body = await refused(server, browser, kube, caplog)
    assert "nested deeper than 32 levels" in body
    await still_serves(server, browser, auth_api, original)


async def test_brackets_inside_strings_do_not_count_as_nesting(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
) -> None:
    """The depth bound counts JSON structure, not brackets inside strings."""
    contract, server = setup
    key = FIELDS[contract]["headers"]
    channel = {**auth_api.channel, key: {**auth_api.channel[key], "X-Note": ["[{" * 100 + '\\"']}}
    await still_serves(server, browser, auth_api, channel)


@pytest.mark.parametrize("value", ["a\x0bb", "a\x7fb", "a\x01b", "a\rb", "a\nb", "x\r\nX-Evil: 1"])
async def test_control_characters_in_header_values_are_refused(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    """\\x0b, \\x7f, \\x01 in a grant's header value used to be a 500 and a traceback."""
    contract, server = setup
    key = FIELDS[contract]["headers"]
    auth_api.channel = {**auth_api.channel, key: {"Authorization": [value]}}
    body = await refused(server, browser, kube, caplog)
    assert f"{key}.Authorization contains a control or non-ASCII character" in body


@pytest.mark.parametrize("name", ["Authorization\n", "X-A\x0b", "X\x7f", "X B", "Authorizatión"])
async def test_invalid_header_names_are_refused(
    setup: tuple[str, TestServer],
    browser: aiohttp.ClientSession,
    auth_api: FakeAuthApi,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    """A header name must be an RFC 9110 token; a trailing newline no longer slips through."""
    contract, server = setup
    key = FIELDS[contract]["headers"]
    auth_api.channel = {**auth_api.channel, key: {name: ["x"]}}
    body = await refused(server, browser, kube, caplog)
    assert "has an invalid header name" in body
    assert "\n" not in body.split("invalid header name", 1)[1].split("request id", 1)[0].strip()
