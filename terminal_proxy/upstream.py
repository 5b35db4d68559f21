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

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from .channel import ConnectionDetails, ssl_context_for
from .config import UpstreamConfig
from .connections import Resolver
from .errors import UpstreamDialFailed, UpstreamTimeout
from .protocols import UPSTREAM_SUBPROTOCOLS, Codec, Role, codec_for, upstream_offer
from .wsdial import HandshakeRefused, UpstreamSocket, WebSocketDial, open_websocket

__all__ = ["Dialer", "Upstream"]

log = logging.getLogger("terminal_proxy.upstream")


@dataclass(slots=True)
class Upstream:
    """A connected upstream: the socket and the codec of what it negotiated."""

    ws: UpstreamSocket
    codec: Codec
    subprotocol: str


class Dialer:
    """Dials upstreams (``wsdial``: a connection of our own, aiohttp's socket on it)."""

    def __init__(self, config: UpstreamConfig, *, close_timeout: float) -> None:
        self._config = config
        self._close_timeout = close_timeout
        self._resolver = Resolver()
        self._unverified: ssl.SSLContext | None = None

    def check_allowed(self, details: ConnectionDetails) -> None:
        details.check_allowed(self._config.allowed_hosts)

    async def dial(self, details: ConnectionDetails, *, forwarded_for: str) -> Upstream:
        """Connect; the allowlist is checked here too, so nothing else is ever dialled."""
        self.check_allowed(details)
        headers = details.header_items()
        if forwarded_for:
            headers.append(("X-Forwarded-For", forwarded_for))
        config = self._config
        dial = WebSocketDial(
            url=details.url,
            protocols=upstream_offer(details.subprotocols, offer_v5=config.offer_v5),
            headers=headers,
            ssl=self._ssl(details),
            heartbeat=config.ping_interval or None,
            # aiohttp's pong deadline is half the heartbeat unless told otherwise.
            pong_timeout=config.pong_timeout or None,
            max_msg_size=config.max_message_size,
            close_timeout=self._close_timeout,
        )
        where = details.target.describe()
        try:
            async with asyncio.timeout(config.dial_timeout):
                ws = await open_websocket(dial, self._resolver)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                "upstream did not answer in time",
                detail=f"dialling {where} timed out after {config.dial_timeout}s",
            ) from exc
        except HandshakeRefused as exc:
            raise _rejected(exc, where) from exc
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamDialFailed(
                "upstream TLS verification failed",
                detail=f"TLS verification of {where} failed: {exc}",
            ) from exc
        except ssl.SSLError as exc:
            raise UpstreamDialFailed(
                "upstream TLS handshake failed", detail=f"TLS with {where} failed: {exc}"
            ) from exc
        except (aiohttp.ClientError, HttpProcessingError) as exc:
            raise UpstreamDialFailed(
                "upstream connection failed",
                detail=f"dialling {where} failed: {type(exc).__name__}: {exc}",
            ) from exc
        except OSError as exc:
            raise UpstreamDialFailed(
                "upstream refused the connection",
                detail=f"connecting to {where} failed: {exc!r}",
            ) from exc
        chosen = ws.protocol or _fallback(details.subprotocols)
        return Upstream(ws, codec_for(_codec_name(chosen), Role.CLIENT), chosen)

    def _ssl(self, details: ConnectionDetails) -> ssl.SSLContext | None:
        if details.scheme != "wss":
            return None
        if not self._config.insecure_skip_tls_verify:
            return ssl_context_for(details.ca_pem)
        if self._unverified is None:
            self._unverified = ssl.create_default_context()
            self._unverified.check_hostname = False
            self._unverified.verify_mode = ssl.CERT_NONE
        return self._unverified


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


def _rejected(exc: HandshakeRefused, where: str) -> UpstreamDialFailed:
    if exc.status == 101:  # a 101 that is not a WebSocket upgrade
        return UpstreamDialFailed(
            "upstream did not complete the WebSocket handshake",
            detail=f"handshake with {where} failed: {exc.message} (status {exc.status})",
        )
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
