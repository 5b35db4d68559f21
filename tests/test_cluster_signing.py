"""The replica-to-replica signature (terminal_proxy/cluster/signing.py): table tests."""

from __future__ import annotations

import pytest

from terminal_proxy.cluster.signing import WINDOW, NonceCache, SignatureRejected, sign, verify

SECRET = b"k" * 32
NOW = 1_800_000_000.0
TARGET = "/group/project/-/environments/1/terminal.ws?resume=a.0123456789abcdef"
NONCE = "n" * 24


def signed(**changes: object) -> str:
    args: dict[str, object] = {
        "secret": SECRET,
        "replica": "b",
        "method": "GET",
        "target": TARGET,
        "now": NOW,
        "nonce": NONCE,
    }
    args.update(changes)
    return sign(**args)  # type: ignore[arg-type]


def test_a_signed_request_names_its_replica() -> None:
    assert verify(SECRET, signed(), "GET", TARGET, NOW, NonceCache()) == "b"
    # Within the window either side of the receiver's clock.
    assert verify(SECRET, signed(now=NOW - WINDOW), "GET", TARGET, NOW, NonceCache()) == "b"
    assert verify(SECRET, signed(now=NOW + WINDOW), "GET", TARGET, NOW, NonceCache()) == "b"


@pytest.mark.parametrize(
    ("value", "method", "target", "why"),
    [
        (None, "GET", TARGET, "no Terminal-Proxy-Replica header"),
        ("", "GET", TARGET, "no Terminal-Proxy-Replica header"),
        ("b;t=1;n=x;sig=00", "GET", TARGET, "malformed"),
        (signed() + " ", "GET", TARGET, "malformed"),
        (signed(replica="B"), "GET", TARGET, "malformed"),
        (signed(secret=b"x" * 32), "GET", TARGET, "bad signature"),
        (signed(), "POST", TARGET, "bad signature"),
        (signed(), "GET", TARGET + "0", "bad signature"),
        (signed(), "GET", TARGET.replace("a.", "b."), "bad signature"),
        (signed().replace(";t=", ";t=1"), "GET", TARGET, "bad signature"),
        (signed(now=NOW - WINDOW - 1), "GET", TARGET, "more than 30s from now"),
        (signed(now=NOW + WINDOW + 1), "GET", TARGET, "more than 30s from now"),
    ],
)
def test_anything_else_is_refused_with_its_reason(
    value: str | None, method: str, target: str, why: str
) -> None:
    with pytest.raises(SignatureRejected, match=why):
        verify(SECRET, value, method, target, NOW, NonceCache())


def test_a_request_cannot_be_replayed() -> None:
    nonces = NonceCache()
    assert verify(SECRET, signed(), "GET", TARGET, NOW, nonces) == "b"
    with pytest.raises(SignatureRejected, match="replayed nonce"):
        verify(SECRET, signed(), "GET", TARGET, NOW + 1, nonces)
    # Another nonce is another request.
    assert verify(SECRET, signed(nonce="m" * 24), "GET", TARGET, NOW, nonces) == "b"


def test_the_nonce_cache_forgets_only_what_the_window_refuses_anyway() -> None:
    nonces = NonceCache(size=3)
    assert nonces.first_use("a", NOW)
    assert not nonces.first_use("a", NOW + 2 * WINDOW - 1)
    # Older than two windows: a request that old fails the time check before this.
    assert nonces.first_use("b", NOW + 2 * WINDOW + 1)
    assert nonces.first_use("a", NOW + 2 * WINDOW + 1)
    for name in "cde":
        assert nonces.first_use(name, NOW + 2 * WINDOW + 1)
    assert len(nonces._seen) <= 3


def test_fresh_signatures_differ() -> None:
    assert sign(SECRET, "b", "GET", TARGET, NOW) != sign(SECRET, "b", "GET", TARGET, NOW)
