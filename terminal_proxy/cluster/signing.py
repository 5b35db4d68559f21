"""The signature that makes a request a replica's (pure; ``tests/test_cluster_signing.py``).

A forwarding replica signs the request line it sends to a peer's internal listener:

    Terminal-Proxy-Replica: <replica id>;t=<unix seconds>;n=<nonce>;sig=<hex>

``sig`` is HMAC-SHA256 over ``<replica id>\\n<method>\\n<target>\\n<t>\\n<nonce>`` with the
cluster's shared secret. The peer accepts it when the MAC matches, ``t`` is within
``WINDOW`` seconds of its own clock and the nonce has not been seen within the window
(a captured request cannot be replayed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict

__all__ = ["HEADER", "WINDOW", "NonceCache", "SignatureRejected", "sign", "verify"]

HEADER = "Terminal-Proxy-Replica"

# Seconds a signed request stays valid either side of the receiver's clock.
WINDOW = 30.0
# Nonces remembered (at most; older ones are outside the window anyway).
NONCES_KEPT = 100_000

_VALUE = re.compile(
    r"(?P<replica>[a-z0-9-]{1,63});t=(?P<t>[0-9]{1,12});n=(?P<nonce>[A-Za-z0-9_-]{16,64});"
    r"sig=(?P<sig>[0-9a-f]{64})"
)


class SignatureRejected(Exception):
    """The request is not a replica's: why, for the log (never for the client)."""


def _mac(secret: bytes, replica: str, method: str, target: str, t: int, nonce: str) -> str:
    message = f"{replica}\n{method}\n{target}\n{t}\n{nonce}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(
    secret: bytes, replica: str, method: str, target: str, now: float, nonce: str | None = None
) -> str:
    """The header value for a request ``method target`` sent by ``replica`` at ``now``."""
    nonce = nonce or secrets.token_urlsafe(18)
    t = int(now)
    return f"{replica};t={t};n={nonce};sig={_mac(secret, replica, method, target, t, nonce)}"


class NonceCache:
    """Nonces seen within the window, oldest first."""

    __slots__ = ("_seen", "_size")

    def __init__(self, size: int = NONCES_KEPT) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._size = size

    def first_use(self, nonce: str, now: float) -> bool:
        """Remember ``nonce``; False when it was seen within the window."""
        while self._seen and (
            len(self._seen) >= self._size or next(iter(self._seen.values())) < now - 2 * WINDOW
        ):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def verify(
    secret: bytes, value: str | None, method: str, target: str, now: float, nonces: NonceCache
) -> str:
    """The signing replica's id, or ``SignatureRejected`` saying why."""
    if not value:
        raise SignatureRejected(f"no {HEADER} header")
    found = _VALUE.fullmatch(value)
    if found is None:
        raise SignatureRejected(f"malformed {HEADER} header")
    replica, nonce = found["replica"], found["nonce"]
    t = int(found["t"])
    expected = _mac(secret, replica, method, target, t, nonce)
    if not hmac.compare_digest(expected, found["sig"]):
        raise SignatureRejected("bad signature")
    if abs(now - t) > WINDOW:
        raise SignatureRejected(f"signature time {t} is more than {WINDOW:g}s from now")
    if not nonces.first_use(nonce, now):
        raise SignatureRejected("replayed nonce")
    return replica
