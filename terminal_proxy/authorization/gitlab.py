"""GitLab's Workhorse ↔ Rails contract, exactly.

Request: ``GET <path>/authorize?<query>`` with ``Gitlab-Workhorse: <version>`` and
``Gitlab-Workhorse-Api-Request: <HS256 JWT, iss=gitlab-workhorse, iat>``. A 200 with
``application/vnd.gitlab-workhorse+json`` and ``{"Channel": {...}}`` authorizes; field
names match case-insensitively, as Go's encoding/json does for Workhorse's struct.
"""

from __future__ import annotations

from typing import Any

from ..channel import ConnectionDetails
from ..errors import InvalidAuthorization
from . import BrowserRequest, Grant, JoinGrant, JoinRequest, PassBack, passback
from .http import HttpAuthorizer, load_json, media_type

__all__ = ["CONTENT_TYPE", "GitLabAuthorizer"]

CONTENT_TYPE = "application/vnd.gitlab-workhorse+json"

_NAMES = {
    "url": "Channel.Url",
    "subprotocols": "Channel.Subprotocols",
    "headers": "Channel.Header",
    "ca_pem": "Channel.CAPem",
    "max_session_time": "Channel.MaxSessionTime",
}


class GitLabAuthorizer(HttpAuthorizer):
    """Speaks to GitLab Rails (or anything that implements its terminal contract)."""

    jwt_header = "Gitlab-Workhorse-Api-Request"
    jwt_issuer = "gitlab-workhorse"

    def extra_headers(self) -> list[tuple[str, str]]:
        return [("Gitlab-Workhorse", self._config.workhorse_version)]

    async def authorize_join(
        self, request: BrowserRequest, join: JoinRequest
    ) -> JoinGrant | PassBack:
        """GitLab's contract has no way to ask about a join: refused, without asking."""
        return passback(403, "joining is not supported on GitLab-contract routes")

    def parse(self, content_type: str, body: bytes) -> Grant:
        if media_type(content_type) != CONTENT_TYPE:
            raise InvalidAuthorization(
                f"authorization API answered 200 with content type "
                f"{media_type(content_type) or 'none'!r}, expected {CONTENT_TYPE} "
                "(is the backend URL pointing at the right service?)"
            )
        doc = _folded(load_json(body))
        channel = doc.get("channel") if doc is not None else None
        if channel is None and doc is not None and "terminal" in doc:
            raise InvalidAuthorization(
                "authorization API returned the legacy 'Terminal' key; GitLab >= 11.11 sends "
                "'Channel'"
            )
        fields = _folded(channel)
        if fields is None:
            raise InvalidAuthorization(
                "authorization API returned invalid connection details: Channel is missing"
            )
        details = ConnectionDetails.build(
            url=fields.get("url"),
            subprotocols=fields.get("subprotocols"),
            headers=fields.get("header"),
            ca_pem=fields.get("capem"),
            max_session_time=fields.get("maxsessiontime"),
            names=_NAMES,
        )
        return Grant(details)


def _folded(value: Any) -> dict[str, Any] | None:
    """Keys lower-cased, like Go's case-insensitive struct field matching."""
    if not isinstance(value, dict):
        return None
    return {str(key).lower(): item for key, item in value.items()}
