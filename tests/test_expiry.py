"""Expiry warning and extension for v1.terminal-proxy sessions with a time limit."""

from __future__ import annotations

import asyncio

import aiohttp

from terminal_proxy.protocols import TERMINAL_PROXY, ExpiryWarning
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import drop, open_term, wait_hello

LIMITS = {"max_duration": "1500ms", "expiry_warning": "700ms", "extension": "1s"}


async def test_warning_on_time_then_one_extension_granted_and_one_refused(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    server = await make_gateway(session=LIMITS | {"max_extensions": 1})
    loop = asyncio.get_running_loop()
    opened = loop.time()
    term = await open_term(browser, str(server.make_url(ENV_PATH)), TERMINAL_PROXY)
    hello = await wait_hello(term)
    assert hello.expires_in is not None and 1.0 < hello.expires_in <= 1.5
    warning = await term.next_control(ExpiryWarning)
    assert isinstance(warning, ExpiryWarning) and warning.extendable
    assert loop.time() - opened >= 0.75  # not before 1.5s - 0.7s
    assert 0 < warning.expires_in <= 0.7
    granted = await term.request_extension()
    assert granted.granted and granted.expires_in is not None
    assert 0.7 < granted.expires_in <= 1.7  # one extension of 1s on top of what was left
    # A new warning before the new end; no extension left.
    again = await term.next_control(ExpiryWarning)
    assert isinstance(again, ExpiryWarning) and not again.extendable
    refused = await term.request_extension()
    assert (refused.granted, refused.reason) == (False, "no extension available")
    assert await term.wait_closed() == (4004, "session time limit reached")
    assert loop.time() - opened >= 2.5


async def test_extension_refused_when_reauthorization_refuses(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    server = await make_gateway(session=LIMITS | {"max_extensions": 3})
    term = await open_term(browser, str(server.make_url(ENV_PATH)), TERMINAL_PROXY)
    await wait_hello(term)
    await term.next_control(ExpiryWarning)
    auth_api.set_mode("deny")
    refused = await term.request_extension()
    assert (refused.granted, refused.reason) == (False, "authorization does not allow it")
    assert await term.wait_closed() == (4004, "session time limit reached")


async def test_no_time_limit_no_warning_and_no_extension(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    server = await make_gateway(session={"extension": "1s", "max_extensions": 1})
    term = await open_term(browser, str(server.make_url(ENV_PATH)), TERMINAL_PROXY)
    hello = await wait_hello(term)
    assert hello.expires_in is None
    answer = await term.request_extension()
    assert (answer.granted, answer.reason) == (False, "this session has no time limit")
    assert term.controls == []


async def test_extension_without_resume(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    """With resume off (no hello), a v1.terminal-proxy session still gets warnings and
    extensions, and ends with its socket."""
    server = await make_gateway(session=LIMITS | {"max_extensions": 1, "resume_grace": 0})
    term = await open_term(browser, str(server.make_url(ENV_PATH)), TERMINAL_PROXY)
    await term.next_control(ExpiryWarning)
    assert term.hello is None
    granted = await term.request_extension()
    assert granted.granted
    ack = await term.ack()
    assert ack.input == 0
    session = await kube.next_session()
    await term.send_stdin(b"echo plain\r")
    await term.read_until(b"\r\nplain\r\n")
    drop(term)
    await session.wait_closed()
