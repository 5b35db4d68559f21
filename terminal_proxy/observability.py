"""One schema of a session's fields, shared by log lines, audit events, metrics and
recording metadata (docs/operations.md, "Audit events"; docs/recording.md).

``opened_fields`` describe the session when it opens (who, where, which subprotocols);
``ended_fields`` add how it ended. Nothing here holds a header, cookie, token, query
string or terminal content. This module imports no part of the relay: the relay hands
it a ``SessionEnd``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .authorization import BrowserRequest, Grant
from .session.stop import Stop

__all__ = ["SessionEnd", "ended_fields", "opened_fields"]


def opened_fields(
    session_id: str,
    route: str,
    request: BrowserRequest,
    grant: Grant,
    browser_protocol: str,
    upstream_protocol: str,
) -> dict[str, object]:
    target = grant.details.target
    fields: dict[str, object] = {
        "route": route,
        "client": request.client_ip,
        "user": grant.user or "-",
        "upstream": f"{target.host}:{target.port}",
    }
    if target.pod is not None:
        fields.update(
            verb=target.verb,
            namespace=target.namespace,
            pod=target.pod,
            container=target.container or "-",
        )
    fields.update(
        browser_protocol=browser_protocol,
        upstream_protocol=upstream_protocol or "-",
        session=session_id,
    )
    return fields


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """How one session ended, as the relay saw it."""

    stop: Stop
    exit_code: int | None
    browser_close: int | None
    upstream_close: int | None
    bytes_in: int
    bytes_out: int
    duration_s: float
    resumes: int
    extensions: int


def ended_fields(end: SessionEnd) -> dict[str, object]:
    return {
        "stop": end.stop.reason.value,
        "detail": end.stop.detail,
        "exit_code": "-" if end.exit_code is None else end.exit_code,
        "browser_close": end.browser_close or end.stop.browser_code,
        "upstream_close": end.upstream_close,
        "bytes_in": end.bytes_in,
        "bytes_out": end.bytes_out,
        "duration_s": round(end.duration_s, 3),
        "resumes": end.resumes,
        "extensions": end.extensions,
    }
