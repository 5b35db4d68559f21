"""The built-in authorizer: a small YAML policy instead of an external web app.

For local use and the demo. A user signs in once with a login token (a one-time token
the demo prints, or a long-lived token whose SHA-256 is in the policy) and gets a
session cookie; each terminal request carrying that cookie is checked against the
policy (which terminal paths the user may open) and, when allowed, gets connection
details for a fresh session on the session server. Re-polls check that the cookie and
the policy still allow it; signing out or a policy change revokes the session.

Policy (YAML)::

    users:
      - name: alice
        groups: [dev]
        token_sha256: "<hex SHA-256 of alice's login token>"   # optional
        terminals: ['^/demo/terminal\\.ws$']                     # path regexes; default: any
        command: [bash, -l]                                       # default: the server's
        join: viewer                  # policy joins of others' terminals: viewer or writer;
                                      # default: none (invitations still work)
    max_session_time: 1h                                          # 0: no limit
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol

import yaml

from ..channel import ConnectionDetails
from ..sessionserver.server import SessionLimitError
from ..units import parse_duration
from . import BrowserRequest, Grant, JoinGrant, JoinRequest, PassBack

__all__ = ["COOKIE", "Policy", "PolicyError", "PolicyUser", "StaticAuthorizer", "TicketIssuer"]

# Session cookie set by the login endpoint (HttpOnly, SameSite=Strict).
COOKIE = "terminal_proxy_session"
_SUBPROTOCOLS = ["channel.k8s.io"]  # the gateway also offers v5 and v4 first
_NAMES = {
    "url": "session.url",
    "subprotocols": "session.subprotocols",
    "headers": "session.headers",
    "ca_pem": "session.ca_pem",
    "max_session_time": "policy.max_session_time",
}


class PolicyError(ValueError):
    """The policy file is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class PolicyUser:
    name: str
    groups: tuple[str, ...] = ()
    token_sha256: str | None = None
    terminals: tuple[re.Pattern[str], ...] = ()
    command: tuple[str, ...] | None = None
    # The role this user may join others' shared terminals with (no invitation needed).
    join: str | None = None

    def may_open(self, path: str) -> bool:
        return not self.terminals or any(p.search(path) for p in self.terminals)


@dataclass(frozen=True, slots=True)
class Policy:
    users: tuple[PolicyUser, ...]
    max_session_time: float = 0.0

    def user(self, name: str) -> PolicyUser | None:
        return next((u for u in self.users if u.name == name), None)

    @classmethod
    def parse(cls, text: str, *, source: str = "<policy>") -> Policy:
        doc = yaml.safe_load(text) or {}
        if not isinstance(doc, dict):
            raise PolicyError(f"{source}: the policy must be a mapping")
        unknown = set(doc) - {"users", "max_session_time"}
        if unknown:
            raise PolicyError(f"{source}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
        users_doc = doc.get("users", [])
        if not isinstance(users_doc, list):
            raise PolicyError(f"{source}: users: must be a list")
        users = tuple(_user(item, f"{source}: users[{i}]") for i, item in enumerate(users_doc))
        names = [u.name for u in users]
        if len(set(names)) != len(names):
            raise PolicyError(f"{source}: users: names must be unique")
        try:
            limit = parse_duration(doc.get("max_session_time", 0))
        except ValueError as exc:
            raise PolicyError(f"{source}: max_session_time: {exc}") from exc
        return cls(users, limit)


def _user(item: Any, where: str) -> PolicyUser:
    if not isinstance(item, dict):
        raise PolicyError(f"{where}: must be a mapping")
    unknown = set(item) - {"name", "groups", "token_sha256", "terminals", "command", "join"}
    if unknown:
        raise PolicyError(f"{where}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}.name: must be a non-empty string")
    groups = item.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise PolicyError(f"{where}.groups: must be a list of strings")
    token = item.get("token_sha256")
    if token is not None and not (isinstance(token, str) and re.fullmatch(r"[0-9a-f]{64}", token)):
        raise PolicyError(f"{where}.token_sha256: must be 64 lower-case hex digits")
    patterns = []
    for i, text in enumerate(item.get("terminals", [])):
        try:
            patterns.append(re.compile(str(text)))
        except re.error as exc:
            raise PolicyError(f"{where}.terminals[{i}]: invalid regex: {exc}") from exc
    command = item.get("command")
    if command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command)
    ):
        raise PolicyError(f"{where}.command: must be a non-empty list of strings")
    join = item.get("join")
    if join is not None and join not in ("viewer", "writer"):
        raise PolicyError(f"{where}.join: must be viewer or writer")
    return PolicyUser(
        name,
        tuple(groups),
        token,
        tuple(patterns),
        None if command is None else tuple(command),
        join,
    )


class Ticket(Protocol):
    url: str
    authorization: str


class TicketIssuer(Protocol):
    """What the authorizer needs of a session server."""

    ca_pem: str

    def new_session(self, command: Sequence[str] | None = None) -> Ticket: ...


@dataclass
class _Login:
    user: str
    created: float


@dataclass
class StaticAuthorizer:
    """Policy + login sessions + a session server = an authorization API in-process."""

    policy: Policy
    issuer: TicketIssuer
    # One-time login tokens: SHA-256 hex → user name; consumed on first use.
    one_time: dict[str, str] = field(default_factory=dict)
    # Session cookie value's SHA-256 → login.
    _logins: dict[str, _Login] = field(default_factory=dict)

    # Logins -----------------------------------------------------------------------------

    def issue_one_time_token(self, user: str) -> str:
        """A 256-bit login token for ``user``, valid once."""
        if self.policy.user(user) is None:
            raise KeyError(user)
        token = secrets.token_urlsafe(32)
        self.one_time[_digest(token)] = user
        return token

    def login(self, token: str) -> str | None:
        """Exchange a login token for a session cookie value; None if the token is bad."""
        digest = _digest(token)
        user = self.one_time.pop(digest, None)
        if user is None:
            user = next(
                (
                    u.name
                    for u in self.policy.users
                    if u.token_sha256 and hmac.compare_digest(u.token_sha256, digest)
                ),
                None,
            )
        if user is None:
            return None
        cookie = secrets.token_urlsafe(32)
        self._logins[_digest(cookie)] = _Login(user, time.time())
        return cookie

    def logout(self, cookie: str) -> None:
        self._logins.pop(_digest(cookie), None)

    def user_for(self, headers: Sequence[tuple[str, str]]) -> str | None:
        """The signed-in user of a request, from its session cookie."""
        for name, value in headers:
            if name.lower() != "cookie":
                continue
            try:
                jar = SimpleCookie(value)
            except CookieError:
                continue
            morsel = jar.get(COOKIE)
            if morsel is not None:
                login = self._logins.get(_digest(morsel.value))
                if login is not None:
                    return login.user
        return None

    # Authorizer ---------------------------------------------------------------------------

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        refusal = self._refusal(request)
        if isinstance(refusal, PassBack):
            return refusal
        user = refusal
        try:
            ticket = self.issuer.new_session(user.command)
        except SessionLimitError as exc:
            # Every terminal of the session server is taken (live, or detached and waiting
            # for a resume): a clear 503, never a crash.
            return PassBack(
                503,
                (("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "30")),
                f"the session server has no free terminal ({exc}); close a terminal tab "
                "or try again later\n".encode(),
            )
        details = ConnectionDetails.build(
            url=ticket.url,
            subprotocols=list(_SUBPROTOCOLS),
            headers={"Authorization": [ticket.authorization]},
            ca_pem=self.issuer.ca_pem,
            max_session_time=self.policy.max_session_time,
            names=_NAMES,
        )
        return Grant(details, user=user.name, groups=user.groups)

    async def authorize_join(
        self, request: BrowserRequest, join: JoinRequest
    ) -> JoinGrant | PassBack:
        """Signed in, in the policy, allowed this path: the user's ``join`` role (None
        without one: enough for an invitation, whose role then applies)."""
        refusal = self._refusal(request)
        if isinstance(refusal, PassBack):
            return refusal
        return JoinGrant(refusal.join, user=refusal.name, groups=refusal.groups)

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        refusal = self._refusal(request)
        if isinstance(refusal, PassBack):
            return refusal
        if refusal.name != grant.user or refusal.groups != grant.groups:
            return PassBack(403, (), b"policy changed\n")
        return grant

    async def aclose(self) -> None:
        return None

    def _refusal(self, request: BrowserRequest) -> PolicyUser | PassBack:
        name = self.user_for(request.headers)
        if name is None:
            return _text(401, "not signed in: open the login URL printed by terminal-proxy\n")
        user = self.policy.user(name)
        if user is None:
            return _text(403, "this user is no longer in the policy\n")
        if not user.may_open(request.path):
            return _text(403, "the policy does not let you open this terminal\n")
        return user


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _text(status: int, body: str) -> PassBack:
    return PassBack(status, (("Content-Type", "text/plain; charset=utf-8"),), body.encode())
