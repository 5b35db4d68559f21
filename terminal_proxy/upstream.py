"""Dialling the upstream, before the browser is upgraded.

``Dialer.dial(details, forwarded_for)`` checks the allowlist, opens the WebSocket with the
authorized headers (plus X-Forwarded-For, never the browser's cookies), verifies TLS
against the details' CA, offers the subprotocols (v5/v4 first where ``channel.k8s.io``
is named) and returns the connected socket and its codec. Every failure becomes an
``UpstreamError`` whose public text names the cause: refused, TLS, timeout, or the
kube-apiserver's own Status message for a rejected handshake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse
from multidict import CIMultiDict, CIMultiDictProxy

from .channel import ConnectionDetails, ssl_context_for
from .config import UpstreamConfig
from .errors import UpstreamDialFailed, UpstreamTimeout
from .protocols import UPSTREAM_SUBPROTOCOLS, Codec, Role, codec_for, upstream_offer
from .session.sockets import set_pong_timeout

__all__ = ["BodyReadingResponse", "Dialer", "HandshakeRejected", "Upstream"]

log = logging.getLogger("terminal_proxy.upstream")

_ERROR_BODY_LIMIT = 16 * 1024
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class HandshakeRejected(Exception):
    """The upstream answered the upgrade with an HTTP status instead of 101."""

    def __init__(
        self,
        status: int,
        reason: str,
        content_type: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(status)
        self.status = status
        self.reason = reason
        self.content_type = content_type
        self.body = body
        # The answer's headers, for a caller that passes the refusal on (forwarding).
        self.headers = headers


class BodyReadingResponse(aiohttp.ClientResponse):
    """Reads a bounded error body when the upgrade is refused.

    aiohttp's ws_connect closes a non-101 response without reading it, and the
    kube-apiserver puts the only useful explanation (its Status JSON) in that body.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        response = await super().start(connection)
        if self.status != 101 and self.method == "GET":
            body = b""
            try:
                while len(body) < _ERROR_BODY_LIMIT and not self.content.at_eof():
                    chunk = await self.content.read(_ERROR_BODY_LIMIT - len(body))
                    if not chunk:
                        break
                    body += chunk
            except (TimeoutError, aiohttp.ClientError):
                pass
            raise HandshakeRejected(
                self.status,
                self.reason or "",
                self.headers.get("Content-Type", ""),
                body,
                tuple(self.headers.items()),
            )
        return response

    def release_handshake(self) -> None:
        """Drop what the 101 left behind, once ``ws_connect`` has checked it.

        The client socket keeps its response for the session's whole life (it closes
        through it), and with it the upstream's response headers (raw and parsed), the
        request info (a copy of our request's headers, the bearer token among them) and
        the connection's HTTP parser. Nothing reads them after the upgrade; an idle
        session is ~3 KiB smaller without them (docs/performance.md). All of it is
        aiohttp's private state: if a future aiohttp renames it, this sets unused
        attributes and changes nothing else.
        """
        self._headers = _NO_HEADERS
        self._raw_headers = ()
        self._request_info = self._request_info._replace(headers=_NO_HEADERS)
        self._cache.clear()
        connection = self.connection
        protocol = None if connection is None else connection.protocol
        if protocol is not None and protocol.upgraded:
            # aiohttp feeds an upgraded connection to its WebSocket reader only: the HTTP
            # parser, which still holds the 101's headers, is never used again (on
            # connection loss it is skipped when None).
            protocol._parser = None


class UpstreamSocket(ClientWebSocketResponse):
    """aiohttp's client WebSocket, without re-arming its heartbeat once closed.

    Bytes that arrive after the close (the upstream's close frame answering ours, or its
    FIN) make aiohttp's ``_on_data_received`` schedule a heartbeat reset, which arms a
    fresh ``ping_interval`` timer on a socket that is already closed. Nothing cancels it,
    so every closed upstream socket (its transport, reader, writer and response: ~40
    objects) stayed alive for ``ping_interval`` + the pong deadline. Under a stream of
    set-ups that is tens of thousands of dead sockets for the collector to walk (full
    collections of ~85 ms, the set-up p99) and memory that only comes back later
    (docs/performance.md, "a closed upstream kept alive by its heartbeat").
    """

    def _reset_heartbeat(self) -> None:
        if self._closed or self._closing:
            return
        super()._reset_heartbeat()


@dataclass(slots=True)
class Upstream:
    """A connected upstream: the socket and the codec of what it negotiated."""

    ws: ClientWebSocketResponse
    codec: Codec
    subprotocol: str


class Dialer:
    """Owns the aiohttp client session used for every upstream connection."""

    def __init__(self, config: UpstreamConfig, *, close_timeout: float) -> None:
        self._config = config
        self._close_timeout = close_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # limit=0: aiohttp's default of 100 connections would cap us at 100 sessions.
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No aiohttp timeout: dial() bounds the dial with upstream.dial_timeout. aiohttp's
            # default (total 5 min) arms a loop timer per request that an upgraded response
            # never cancels: every dial left one behind for 5 minutes (~0.5 KiB each).
            timeout=aiohttp.ClientTimeout(total=None),
            response_class=BodyReadingResponse,
            ws_response_class=UpstreamSocket,
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("User-Agent",),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_allowed(self, details: ConnectionDetails) -> None:
        details.check_allowed(self._config.allowed_hosts)

    async def dial(self, details: ConnectionDetails, *, forwarded_for: str) -> Upstream:
        """Connect; the allowlist is checked here too, so nothing else is ever dialled."""
        assert self._session is not None, "Dialer.start() was not called"
        self.check_allowed(details)
        offer = upstream_offer(details.subprotocols, offer_v5=self._config.offer_v5)
        headers = details.header_items()
        if forwarded_for:
            headers.append(("X-Forwarded-For", forwarded_for))
        where = details.target.describe()
        try:
            async with asyncio.timeout(self._config.dial_timeout):
                ws = await self._session.ws_connect(
                    details.url,
                    protocols=offer,
                    headers=headers,
                    ssl=self._ssl(details),
                    heartbeat=self._config.ping_interval or None,
                    max_msg_size=self._config.max_message_size,
                    autoclose=True,
                    autoping=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._close_timeout),
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                "upstream did not answer in time",
                detail=f"dialling {where} timed out after {self._config.dial_timeout}s",
            ) from exc
        except HandshakeRejected as exc:
            raise _rejected(exc, where) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamDialFailed(
                "upstream TLS verification failed",
                detail=f"TLS verification of {where} failed: {exc.certificate_error}",
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise UpstreamDialFailed(
                "upstream TLS handshake failed", detail=f"TLS with {where} failed: {exc}"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamDialFailed(
                "upstream refused the connection",
                detail=f"connecting to {where} failed: {exc.os_error!r}",
            ) from exc
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamDialFailed(
                "upstream did not complete the WebSocket handshake",
                detail=f"handshake with {where} failed: {exc.message} (status {exc.status})",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamDialFailed(
                "upstream connection failed",
                detail=f"dialling {where} failed: {type(exc).__name__}: {exc}",
            ) from exc
        response = getattr(ws, "_response", None)
        if isinstance(response, BodyReadingResponse):  # aiohttp keeps it as ws._response
            response.release_handshake()
        if self._config.pong_timeout and self._config.ping_interval:
            # aiohttp's pong deadline is half the heartbeat unless told otherwise.
            set_pong_timeout(ws, self._config.pong_timeout)
        chosen = ws.protocol or _fallback(details.subprotocols)
        return Upstream(ws, codec_for(_codec_name(chosen), Role.CLIENT), chosen)

    def _ssl(self, details: ConnectionDetails) -> ssl.SSLContext | bool:
        if details.scheme != "wss":
            return True  # plain ws: aiohttp ignores it
        if self._config.insecure_skip_tls_verify:
            return False
        return ssl_context_for(details.ca_pem)


def _fallback(offered: tuple[str, ...]) -> str:
    """No subprotocol echoed: a kubelet treats that as binary channel.k8s.io; assume
    the first one the authorization named, or a raw byte stream."""
    for name in offered:
        if name in UPSTREAM_SUBPROTOCOLS:
            return name
    return ""


def _codec_name(name: str) -> str:
    # Unknown or no subprotocol: relay bytes as a raw stream (Workhorse passes through).
    return name if name in UPSTREAM_SUBPROTOCOLS else "terminal.gitlab.com"


def _rejected(exc: HandshakeRejected, where: str) -> UpstreamDialFailed:
    message = _status_message(exc.content_type, exc.body)
    public = f"upstream refused the terminal: HTTP {exc.status}"
    if message:
        public += f": {message}"
    elif exc.status == 403 and not exc.body:
        public += " (no common subprotocol?)"
    return UpstreamDialFailed(public, detail=f"{where} answered {exc.status}: {message}")


def _status_message(content_type: str, body: bytes) -> str:
    """The message of a Kubernetes Status document, or the first line of a text body."""
    if not body:
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])[:300]
    if content_type.startswith("text/"):
        first = body.decode("utf-8", "replace").strip().splitlines()
        return first[0][:300] if first else ""
    return ""
