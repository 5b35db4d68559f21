"""ConnectionDetails: validation naming the field, value equality, allowlist, repr."""

from __future__ import annotations

from typing import Any

import pytest
import trustme

from terminal_proxy.channel import ConnectionDetails
from terminal_proxy.config import HostPattern
from terminal_proxy.errors import InvalidAuthorization, UpstreamNotAllowed

NAMES = {
    "url": "Url",
    "subprotocols": "Subprotocols",
    "headers": "Header",
    "ca_pem": "CAPem",
    "max_session_time": "MaxSessionTime",
}
CA = trustme.CA().cert_pem.bytes().decode()
URL = "wss://kube.example.com:6443/api/v1/namespaces/ns/pods/web-1/exec?container=app&tty=true"


def build(**over: Any) -> ConnectionDetails:
    raw: dict[str, Any] = {
        "url": URL,
        "subprotocols": ["channel.k8s.io"],
        "headers": {"Authorization": ["Bearer secret-token"]},
        "ca_pem": CA,
        "max_session_time": 600,
    }
    raw.update(over)
    return ConnectionDetails.build(**raw, names=NAMES)


def test_target_is_parsed_from_a_kubernetes_url() -> None:
    """Namespace, pod, container and verb come out of the exec URL."""
    target = build().target
    assert (target.host, target.port) == ("kube.example.com", 6443)
    assert (target.namespace, target.pod, target.container, target.verb) == (
        "ns",
        "web-1",
        "app",
        "exec",
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url", "https://x:1/", "Url must use ws:// or wss://"),
        ("url", "", "Url must be a non-empty string"),
        ("url", "wss://u:p@x:1/", "Url must not carry credentials"),
        ("subprotocols", [], "Subprotocols must be a non-empty list"),
        ("subprotocols", ["bad proto"], "Subprotocols must hold subprotocol tokens"),
        ("headers", {"A": "b"}, "Header.A must be a list of strings"),
        ("headers", {"Sec-WebSocket-Protocol": ["x"]}, "Sec-WebSocket-Protocol must not be given"),
        ("headers", {"A": ["x\r\nInjected: 1"]}, "Header.A contains a control or non-ASCII"),
        ("ca_pem", "garbage", "CAPem is not a valid PEM certificate"),
        ("max_session_time", "600", "MaxSessionTime must be a number"),
        ("max_session_time", -5, "MaxSessionTime must not be negative"),
    ],
)
def test_invalid_fields_are_named(field: str, value: Any, message: str) -> None:
    """Every invalid field raises InvalidAuthorization naming it."""
    with pytest.raises(InvalidAuthorization, match=message.replace("(", r"\(")):
        build(**{field: value})


@pytest.mark.parametrize(
    ("over", "equal"),
    [
        ({}, True),
        ({"headers": {"Authorization": ["Bearer secret-token"]}}, True),
        ({"headers": {"Authorization": ["Bearer other"]}}, False),
        ({"headers": {"Authorization": ["Bearer secret-token"], "X": ["1"]}}, False),
        ({"ca_pem": None}, False),
        ({"max_session_time": 0}, False),
        ({"subprotocols": ["channel.k8s.io", "base64.channel.k8s.io"]}, False),
        ({"url": URL + "&x=1"}, False),
    ],
)
def test_equality_by_value(over: dict[str, Any], equal: bool) -> None:
    """Details compare by value: any change in URL, headers, CA, protocols or time differs."""
    assert (build() == build(**over)) is equal


def test_header_key_order_is_not_significant() -> None:
    """Two header maps in different key order are equal."""
    a = build(headers={"A": ["1"], "B": ["2"]})
    b = build(headers={"B": ["2"], "A": ["1"]})
    assert a == b


@pytest.mark.parametrize(
    ("allowed", "ok"),
    [
        (["kube.example.com:6443"], True),
        (["*.example.com:6443"], True),
        (["kube.example.com:*"], True),
        (["kube.example.com:443"], False),
        (["other.example.com:6443"], False),
        ([], False),
    ],
)
def test_allowlist(allowed: list[str], ok: bool) -> None:
    """Only host:port entries on the allowlist pass."""
    details = build()
    patterns = [HostPattern.parse(a) for a in allowed]
    if ok:
        details.check_allowed(patterns)
    else:
        with pytest.raises(UpstreamNotAllowed):
            details.check_allowed(patterns)


def test_repr_never_shows_header_values() -> None:
    """The repr (and so any log of it) names headers but never their values."""
    text = repr(build())
    assert "Authorization" in text and "secret-token" not in text
