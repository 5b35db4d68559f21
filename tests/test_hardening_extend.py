"""Hardening of extensions (issue 11, item 5): extension requests sent at once are
decided one at a time, and at most ``session.max_extensions`` are ever granted."""

from __future__ import annotations

import aiohttp

from terminal_proxy.protocols import TERMINAL_PROXY, ExtensionAnswer, ExtensionRequest
from tests.conftest import ENV_PATH, GatewayFactory, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import open_term, wait_hello

LIMITS = {"max_duration": "120s", "extension": "120s", "max_extensions": 1}


async def test_twenty_extends_at_once_grant_one(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    """20 extend messages at once (limit 1): one is granted (120 s become 240 s, not
    1,320 s); every other one gets a refusal with its reason."""
    server = await make_gateway(session=LIMITS)
    term = await open_term(browser, str(server.make_url(ENV_PATH)), TERMINAL_PROXY)
    hello = await wait_hello(term)
    assert hello.expires_in is not None and hello.expires_in <= 120
    for _ in range(20):
        await term.send_event(ExtensionRequest())
    answers = []
    for _ in range(20):
        answer = await term.next_control(ExtensionAnswer)
        assert isinstance(answer, ExtensionAnswer)
        answers.append(answer)
    granted = [a for a in answers if a.granted]
    assert len(granted) == 1, answers
    assert granted[0].expires_in is not None and 200 < granted[0].expires_in <= 240
    reasons = {a.reason for a in answers if not a.granted}
    assert reasons <= {"no extension available", "an extension request is already being decided"}
    # Later ones too: the limit is spent.
    for _ in range(3):
        await term.send_event(ExtensionRequest())
        again = await term.next_control(ExtensionAnswer)
        assert isinstance(again, ExtensionAnswer) and not again.granted
    # The authorization API was asked for the granted one only (at most one at a time).
    assert auth_api.max_in_flight.get("", 0) <= 1
