"""The built-in authorizer: policy parsing, one-time logins, cookies, re-authorization."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from terminal_proxy.authorization import BrowserRequest, Grant, PassBack
from terminal_proxy.authorization.static import (
    COOKIE,
    Policy,
    PolicyError,
    PolicyUser,
    StaticAuthorizer,
)

CA = "-----BEGIN CERTIFICATE-----\n"


@dataclass
class FakeTicket:
    url: str
    authorization: str


class FakeIssuer:
    def __init__(self, ca_pem: str) -> None:
        self.ca_pem = ca_pem
        self.issued: list[Sequence[str] | None] = []

    def new_session(self, command: Sequence[str] | None = None) -> FakeTicket:
        self.issued.append(command)
        n = len(self.issued)
        return FakeTicket(f"wss://127.0.0.1:9/session/s{n}/exec", f"Bearer t{n}")


@pytest.fixture
def issuer() -> FakeIssuer:
    import trustme

    return FakeIssuer(trustme.CA().cert_pem.bytes().decode())


def request(cookie: str | None, path: str = "/demo/terminal.ws") -> BrowserRequest:
    headers = (("Cookie", f"a=b; {COOKIE}={cookie}"),) if cookie else ()
    return BrowserRequest(path=path, query_string="", headers=headers)


POLICY = """
users:
  - name: alice
    groups: [dev]
    token_sha256: "{digest}"
    terminals: ['^/demo/terminal\\.ws$']
    command: [bash, -l]
  - name: bob
max_session_time: 30m
""".format(digest=hashlib.sha256(b"alice-token").hexdigest())


def test_policy_parses() -> None:
    """A full policy parses into users, patterns, commands and the time limit."""
    policy = Policy.parse(POLICY)
    alice = policy.user("alice")
    assert alice is not None and alice.command == ("bash", "-l") and alice.groups == ("dev",)
    assert alice.may_open("/demo/terminal.ws") and not alice.may_open("/other/terminal.ws")
    assert policy.max_session_time == 1800


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("users: [{name: a, colour: red}]", "users[0]: unknown key"),
        ("users: [{groups: []}]", "users[0].name"),
        ("users: [{name: a, token_sha256: xyz}]", "token_sha256"),
        ("users: [{name: a, terminals: ['(']}]", "terminals[0]: invalid regex"),
        ("users: [{name: a}, {name: a}]", "unique"),
        ("max_session_time: soon", "max_session_time"),
        ("extra: 1", "unknown key"),
    ],
)
def test_policy_errors_name_the_key(text: str, message: str) -> None:
    """Each invalid policy raises PolicyError naming the key."""
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Policy.parse(text)


async def test_one_time_token_works_once(issuer: FakeIssuer) -> None:
    """A one-time login token gives a cookie once; the second use fails."""
    auth = StaticAuthorizer(Policy((PolicyUser("you"),)), issuer)
    token = auth.issue_one_time_token("you")
    cookie = auth.login(token)
    assert cookie is not None
    assert auth.login(token) is None
    grant = await auth.authorize(request(cookie))
    assert isinstance(grant, Grant) and grant.user == "you"
    assert grant.details.url == "wss://127.0.0.1:9/session/s1/exec"
    assert grant.details.header_items() == [("Authorization", "Bearer t1")]
    assert grant.details.ca_pem == issuer.ca_pem


async def test_policy_token_and_terminal_patterns(issuer: FakeIssuer) -> None:
    """A policy token signs in; paths outside the user's patterns get 403."""
    auth = StaticAuthorizer(Policy.parse(POLICY), issuer)
    cookie = auth.login("alice-token")
    assert cookie is not None
    grant = await auth.authorize(request(cookie))
    assert isinstance(grant, Grant) and grant.groups == ("dev",)
    assert grant.details.max_session_time == 1800
    assert issuer.issued == [("bash", "-l")]
    denied = await auth.authorize(request(cookie, "/elsewhere/terminal.ws"))
    assert isinstance(denied, PassBack) and denied.status == 403


async def test_no_or_bad_cookie_is_401(issuer: FakeIssuer) -> None:
    """Without a valid session cookie the answer is 401, and nothing is issued."""
    auth = StaticAuthorizer(Policy((PolicyUser("you"),)), issuer)
    for cookie in (None, "forged"):
        answer = await auth.authorize(request(cookie))
        assert isinstance(answer, PassBack) and answer.status == 401
    assert issuer.issued == []


async def test_reauthorize_keeps_grant_until_logout(issuer: FakeIssuer) -> None:
    """Re-authorization returns the same grant (no new session) until sign-out."""
    auth = StaticAuthorizer(Policy((PolicyUser("you"),)), issuer)
    cookie = auth.login(auth.issue_one_time_token("you"))
    assert cookie is not None
    grant = await auth.authorize(request(cookie))
    assert isinstance(grant, Grant)
    assert await auth.reauthorize(request(cookie), grant) is grant
    assert len(issuer.issued) == 1
    auth.logout(cookie)
    revoked = await auth.reauthorize(request(cookie), grant)
    assert isinstance(revoked, PassBack) and revoked.status == 401
