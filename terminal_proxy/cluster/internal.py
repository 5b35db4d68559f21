"""The internal listener: where the other replicas forward resumes and joins of this
replica's sessions (``cluster.internal_listen``).

Only requests signed by a replica (``signing.py``) are served (``serve``), by the same handler as
the main listener; anything else gets 403. The request is marked with the forwarding
replica (``FORWARDED_BY``), so the handshake trusts its ``X-Forwarded-For`` and
``X-Forwarded-Proto`` (the browser's address and scheme) and never forwards it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from ..config import ListenAddress
from ..gateway import FORWARDED_BY
from .signing import HEADER, NonceCache, SignatureRejected, verify

__all__ = ["internal_listener"]

log = logging.getLogger("terminal_proxy.cluster")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def internal_listener(
    address: ListenAddress,
    *,
    secret: bytes,
    serve: Handler,
    share: Callable[[web.Application], None],
    refused: Callable[[], None],
) -> AsyncIterator[str]:
    """Serve signed requests on ``address`` with ``serve`` while the block runs; yields
    the listener's URL. ``share`` gives the internal app what the handler reads from its
    app (the gateway)."""
    nonces = NonceCache()

    @web.middleware
    async def signed_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            replica = verify(
                secret,
                request.headers.get(HEADER),
                request.method,
                request.raw_path,
                time.time(),
                nonces,
            )
        except SignatureRejected as exc:
            refused()
            log.warning(
                "internal request refused: %s",
                exc,
                extra={"fields": {"peer": request.remote or "-"}},
            )
            response = web.Response(status=403, text="not a replica of this cluster\n")
            response.force_close()
            return response
        request[FORWARDED_BY] = replica
        return await handler(request)

    app = web.Application(middlewares=[signed_only], client_max_size=64 * 1024)
    share(app)
    app.router.add_route("*", "/{tail:.*}", serve)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, address.host, address.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("internal listener (replica-to-replica) on %s", url)
        yield url
    finally:
        await runner.cleanup()
