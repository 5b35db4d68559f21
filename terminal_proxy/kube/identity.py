"""Who the user is, as the cluster will know them.

The user comes from a trusted source in front of the gateway: an authenticating proxy's
header, believed only from ``kubernetes.identity.trusted_proxies``, or a bearer JWT (header
or cookie) verified against the configured public keys. ``system:`` identities are refused.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

import jwt

from ..authorization import BrowserRequest, PassBack, passback
from ..config import KubernetesIdentityConfig
from .cluster import ClusterError

__all__ = ["Identity", "IdentityVerifier", "read_public_keys"]

log = logging.getLogger("terminal_proxy.kubernetes")

_FORBIDDEN_GROUPS = frozenset({"system:masters"})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the user is, as the cluster will know them."""

    user: str
    groups: tuple[str, ...] = ()


class IdentityVerifier:
    """The user from an authenticating proxy's header or a verified bearer JWT."""

    def __init__(self, config: KubernetesIdentityConfig) -> None:
        self._config = config
        self._keys = () if config.jwt_keys_file is None else read_public_keys(config.jwt_keys_file)

    def identify(self, request: BrowserRequest) -> Identity | PassBack:
        config = self._config
        found: Identity | PassBack | None = None
        if config.user_header is not None:
            found = self._from_header(request)
        if found is None and self._keys:
            found = self._from_jwt(request)
        if found is None:
            return passback(401, "not authenticated: no trusted user identity on the request")
        if isinstance(found, PassBack):
            return found
        if found.user.startswith("system:") or _FORBIDDEN_GROUPS & set(found.groups):
            return passback(403, "system: identities cannot open terminals through the gateway")
        return found

    def _from_header(self, request: BrowserRequest) -> Identity | None:
        config = self._config
        assert config.user_header is not None
        wanted = config.user_header.lower()
        values = [v.strip() for k, v in request.headers if k.lower() == wanted]
        if not values:
            return None
        peer = request.peer or request.forwarded_for.rsplit(",", 1)[-1].strip()
        if not _in_networks(peer, config.trusted_proxies):
            log.warning(
                "ignoring %s from untrusted peer %s (not on kubernetes.identity.trusted_proxies)",
                config.user_header,
                peer or "-",
            )
            return None
        if len(values) != 1 or not values[0]:
            return None
        groups: list[str] = []
        if config.groups_header is not None:
            wanted_groups = config.groups_header.lower()
            for name, value in request.headers:
                if name.lower() == wanted_groups:
                    groups.extend(g.strip() for g in value.split(",") if g.strip())
        return self._named(values[0], groups)

    def _from_jwt(self, request: BrowserRequest) -> Identity | PassBack | None:
        config = self._config
        token = _bearer_token(request.headers) or _cookie(request.headers, config.jwt_cookie)
        if token is None:
            return None
        claims: dict[str, Any] | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=list(config.jwt_algorithms),
                    audience=config.jwt_audience,
                    issuer=config.jwt_issuer,
                    leeway=config.jwt_leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                return passback(401, f"invalid token: {_jwt_reason(exc)}")
        if claims is None:
            return passback(401, "invalid token: signature not verified by any configured key")
        user = claims.get(config.username_claim)
        if not isinstance(user, str) or not user:
            return passback(401, f"invalid token: claim {config.username_claim!r} is missing")
        raw_groups = claims.get(config.groups_claim, [])
        if not isinstance(raw_groups, list) or not all(isinstance(g, str) for g in raw_groups):
            return passback(401, f"invalid token: claim {config.groups_claim!r} is not a list")
        return self._named(user, raw_groups)

    def _named(self, user: str, groups: Sequence[str]) -> Identity:
        config = self._config
        return Identity(
            config.username_prefix + user,
            tuple(dict.fromkeys(config.groups_prefix + g for g in groups)),
        )


_PEM_KEY = re.compile(
    r"-----BEGIN (?:RSA |EC )?PUBLIC KEY-----.+?-----END (?:RSA |EC )?PUBLIC KEY-----", re.S
)


def read_public_keys(path: str) -> tuple[str, ...]:
    """The PEM public keys in ``path``; ClusterError naming the file if there are none."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ClusterError(
            f"kubernetes.identity.jwt_keys_file: cannot read {path!r}: {reason}"
        ) from None
    keys = tuple(match.group(0) for match in _PEM_KEY.finditer(text))
    if not keys:
        raise ClusterError(
            f"kubernetes.identity.jwt_keys_file: {path!r} holds no PEM public key "
            "(BEGIN PUBLIC KEY)"
        )
    return keys


def _jwt_reason(exc: Exception) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"claim {exc.claim!r} is missing"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    return "malformed"


def _bearer_token(headers: Sequence[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _cookie(headers: Sequence[tuple[str, str]], name: str | None) -> str | None:
    if name is None:
        return None
    for header, value in headers:
        if header.lower() != "cookie":
            continue
        try:
            jar = SimpleCookie(value)
        except CookieError:
            continue
        morsel = jar.get(name)
        if morsel is not None and morsel.value:
            return morsel.value
    return None


def _in_networks(address: str, networks: Sequence[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
