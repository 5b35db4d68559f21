"""Client connections of our own, under the two clients that make every session set-up:
the upstream dial (``wsdial.py``) and the authorization request (``httpclient.py``).

aiohttp's ``ClientSession`` builds a general-purpose request per call (URL and header
objects, cookie and proxy handling, a connector with pool keys, happy eyeballs, a response
object with a copy of the request's headers). Both of our requests are always the same
small thing, so they are written as one buffer on a connection opened here, and the answer
is parsed by aiohttp's C HTTP parser in its own ``ResponseHandler`` protocol: the parts of
aiohttp that are fast, without the parts that are general (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Sequence

from aiohttp.client_proto import ResponseHandler

__all__ = [
    "RESOLVE_TTL",
    "Connection",
    "Resolver",
    "connect",
    "expect_answer",
    "request_head",
]

# aiohttp's resolver kept names for 10 seconds; so does this one.
RESOLVE_TTL = 10.0
# Names kept at most (a cache, not a directory: past it, it starts again).
_MAX_NAMES = 1024


class Connection(ResponseHandler):
    """aiohttp's client protocol, without its per-connection ``TCP_NODELAY``.

    asyncio and uvloop set ``TCP_NODELAY`` on every TCP transport they make; aiohttp sets
    it again, through a socket object built from the descriptor for the purpose
    (``getsockname`` and ``getsockopt`` calls, then ``setsockopt``): four system calls per
    connection that change nothing (``tests/test_httpclient.py`` checks the option is on).
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


class Resolver:
    """Names to addresses, kept ``ttl`` seconds; address literals as they are."""

    def __init__(self, ttl: float = RESOLVE_TTL) -> None:
        self._ttl = ttl
        self._known: dict[tuple[str, int], tuple[float, list[str]]] = {}

    async def addresses(self, host: str, port: int) -> list[str]:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        now = time.monotonic()
        known = self._known.get((host, port))
        if known is not None and known[0] > now:
            return known[1]
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if len(self._known) >= _MAX_NAMES:
            self._known.clear()
        self._known[(host, port)] = (now + self._ttl, found)
        return found


async def connect(
    host: str, port: int, context: ssl.SSLContext | None, resolver: Resolver
) -> ResponseHandler:
    """A connection to ``host``, ready for one HTTP/1.1 answer: each address in turn until
    one connects; TLS (verified as ``context`` says, SNI ``host``) is not retried elsewhere.
    Raises the connection's ``OSError`` (``ssl.SSLError`` among them)."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for address in await resolver.addresses(host, port):
        try:
            _, protocol = await loop.create_connection(
                lambda: Connection(loop),
                address,
                port,
                ssl=context,
                server_hostname=host.rstrip(".") if context is not None else None,
            )
        except ssl.SSLError:
            raise  # a TLS failure is the server's answer, not an address to skip
        except OSError as exc:
            last = exc
            continue
        expect_answer(protocol)
        return protocol
    raise last if last is not None else OSError(f"no address for {host}")


def expect_answer(protocol: ResponseHandler) -> None:
    """Ready ``protocol`` to parse the next answer (a fresh parser, as aiohttp does per
    request): raw bodies, no read timeout (the callers bound the whole request)."""
    protocol.set_response_params(read_until_eof=False, auto_decompress=False)


def request_head(
    target: str, ours: Iterable[tuple[str, str]], given: Sequence[tuple[str, str]]
) -> bytes:
    """``GET target HTTP/1.1``, then ``ours`` (Host first) except those ``given`` names
    too, then ``given`` as given (a forwarded browser's Host is its own, as aiohttp and
    Workhorse pass it)."""
    named = {name.lower() for name, _ in given}
    lines = [f"GET {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in ours if name.lower() not in named]
    lines += [f"{name}: {value}" for name, value in given]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
