"""Hardening of a live session's controls: concurrent extension requests, and a resume
with the right token but impossible offsets (issue 11, items 5 and 6)."""

from __future__ import annotations

import aiohttp

from terminal_proxy.protocols import TERMINAL_PROXY, ExtensionAnswer, ExtensionRequest
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.termclient import drop, open_term, resume_term, wait_hello


async def test_twenty_extend_requests_at_once_grant_at_most_max_extensions(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    session = {"max_duration": "120s", "extension": "600s", "max_extensions": 1}
    server = await make_gateway(session=session)
    term = await open_term(browser, str(server.make_url(ENV_PATH)), TERMINAL_PROXY)
    hello = await wait_hello(term)
    assert hello.expires_in is not None and hello.expires_in <= 120
    # Every request is in flight at once: the authorization API holds its answers.
    asked = len(auth_api.requests)
    auth_api.set_mode("stall")
    for _ in range(20):
        await term.send_event(ExtensionRequest())
    await auth_api.wait_requests(asked + 1)
    auth_api.set_mode("ok")
    answers = [await term.next_control(ExtensionAnswer) for _ in range(20)]
    granted = [a for a in answers if isinstance(a, ExtensionAnswer) and a.granted]
    assert len(granted) == 1
    assert granted[0].expires_in is not None and granted[0].expires_in <= 120 + 600
    refused = {a.reason for a in answers if isinstance(a, ExtensionAnswer) and not a.granted}
    assert refused == {"no extension available"}
    await term.ws.close()


async def test_impossible_offsets_refuse_that_socket_but_keep_the_owners_session(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession
) -> None:
    server = await make_gateway(session={"resume_grace": "30s"})
    url = str(server.make_url(ENV_PATH))
    term = await open_term(browser, url, TERMINAL_PROXY)
    await wait_hello(term)
    await term.send_stdin(b"echo before\n")
    await term.read_until(b"before")
    drop(term)
    # The right token, but 'received' beyond what the session ever produced.
    term.offset += 10**9
    bad = await resume_term(browser, url, term)
    assert bad.close_code == 1002
    term.offset -= 10**9
    good = await resume_term(browser, url, term)
    assert good.hello is not None and good.hello.resumed
    await good.send_stdin(b"echo after\n")
    await good.read_until(b"after")
    await good.ws.close()
