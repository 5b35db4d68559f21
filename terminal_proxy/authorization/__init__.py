"""Authorization: may this browser request open this terminal, and where does it go?

Every authorizer answers ``authorize(request)`` with either a ``Grant`` (validated
connection details plus who the user is) or a ``PassBack`` (the web app's own answer,
handed to the browser as-is before any upgrade). Re-polls call the same method with the
same ``BrowserRequest`` snapshot and compare grants by value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..channel import ConnectionDetails

__all__ = [
    "Authorizer",
    "BrowserRequest",
    "Extender",
    "Extension",
    "Grant",
    "JoinAuthorizer",
    "JoinGrant",
    "JoinRequest",
    "PassBack",
    "RecordingRequest",
    "extend_by",
    "offer_of",
    "passback",
]


@dataclass(frozen=True, slots=True)
class BrowserRequest:
    """What the authorization needs of the browser's upgrade request, kept for re-polls."""

    path: str
    query_string: str
    # Every header as received, in order, duplicates kept (cookies included: they are
    # what the web app authenticates). Never logged.
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    # Address the request came from after trusted-proxy processing (for logs, limits).
    client_ip: str = ""
    # Value for the upstream's X-Forwarded-For.
    forwarded_for: str = ""
    # The TCP peer itself (a proxy, or the browser), before any X-Forwarded-For: what
    # decides whether identity headers set by an authenticating proxy are believed.
    peer: str = ""
    # The route the gateway matched (its name) and the pattern's named groups: matched
    # once, by the gateway, for every authorizer.
    route: str = ""
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RecordingRequest:
    """The authorization's say on recording this session (native contract ``recording``):
    ``enabled`` overrides ``recording.routes``; ``required`` and ``input``, when given,
    override ``recording.policy`` and ``recording.input``."""

    enabled: bool
    required: bool | None = None
    input: bool | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """The authorization said yes: dial ``details``; ``user`` is for logs and limits;
    ``recording``: None leaves it to the route (docs/recording.md)."""

    details: ConnectionDetails
    user: str | None = None
    groups: tuple[str, ...] = ()
    recording: RecordingRequest | None = None


@dataclass(frozen=True, slots=True)
class PassBack:
    """The authorization said something else: give the browser this response as-is."""

    status: int
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)


def passback(status: int, text: str) -> PassBack:
    """A plain-text answer for the browser, before any upgrade."""
    body = text if text.endswith("\n") else text + "\n"
    return PassBack(status, (("Content-Type", "text/plain; charset=utf-8"),), body.encode())


class Authorizer(Protocol):
    """One way of deciding; the GitLab and native contracts are two of them."""

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        """Decide for ``request``; raise AuthorizationError subclasses on failure."""
        ...

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        """Decide again during the session; a Grant unequal to ``grant`` ends it."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections."""
        ...


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A browser asks to join a live session (docs/sharing.md): whose, and through which
    invitation (None: a policy join, the authorization alone decides the role)."""

    session: str
    owner: str | None
    invitation: str | None = None

    def document(self) -> dict[str, str | None]:
        """The ``join`` object of the native contract's request (header and JWT claim)."""
        doc: dict[str, str | None] = {"session": self.session, "owner": self.owner}
        if self.invitation is not None:
            doc["invitation"] = self.invitation
        return doc


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """The authorization lets the user join: ``role`` "viewer" or "writer", or None when
    it names none (enough for an invitation join, whose invitation names the role)."""

    role: str | None
    user: str | None = None
    groups: tuple[str, ...] = ()


@runtime_checkable
class JoinAuthorizer(Protocol):
    """An authorizer that decides joins of shared terminals. Routes whose authorizer is
    not one refuse joins (403)."""

    async def authorize_join(
        self, request: BrowserRequest, join: JoinRequest
    ) -> JoinGrant | PassBack:
        """Decide whether ``request`` may join; raise AuthorizationError subclasses when
        the decision cannot be made."""
        ...


@dataclass(frozen=True, slots=True)
class Extension:
    """An extender's answer. Granted: the session ends ``expires_in`` seconds from now
    (several sessions may share what was extended, so the time left is what counts);
    ``last``: no further extension is possible. Refused: ``expires_in`` is None and
    ``reason`` says why (sent to the browser)."""

    expires_in: float | None
    reason: str = ""
    last: bool = False


@runtime_checkable
class Extender(Protocol):
    """An authorizer that owns the time limit of some of its sessions. A provisioned
    terminal lives as long as its pod, so extending the session means extending the pod's
    expiry in the cluster; ``session.extension`` does not apply to those sessions."""

    def extension_offer(self, request: BrowserRequest) -> float | None:
        """Seconds one extension adds for ``request``'s route; 0: no extensions; None: not
        this authorizer's business (``session.extension`` applies)."""
        ...

    async def extend(self, request: BrowserRequest, grant: Grant) -> Extension:
        """Re-authorize and extend; raise AuthorizationError subclasses when the decision
        cannot be made."""
        ...


def offer_of(authorizer: object, request: BrowserRequest) -> float | None:
    """``authorizer``'s extension offer for ``request`` when it is an Extender, else None
    (``session.extension`` applies)."""
    return authorizer.extension_offer(request) if isinstance(authorizer, Extender) else None


async def extend_by(authorizer: object, request: BrowserRequest, grant: Grant) -> Extension:
    """``authorizer``'s extension when it is an Extender, else a refusal."""
    if not isinstance(authorizer, Extender):
        return Extension(None, "no extension available")
    return await authorizer.extend(request, grant)
