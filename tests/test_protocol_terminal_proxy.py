"""Table tests for ``v1.terminal-proxy`` (docs/browser-protocol.md), like tests/test_protocols.py.

The codec alone (decode and encode per role, against literal frames), then every pair
with the seven upstream protocols through ``translate``: the relay translates events, so
what the browser types reaches each upstream and what each upstream writes reaches the
browser; session control never leaks upstream.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terminal_proxy.protocols import (
    STDERR,
    STDOUT,
    TERMINAL_PROXY,
    UPSTREAM_SUBPROTOCOLS,
    Ack,
    Event,
    Exit,
    ExpiryWarning,
    ExtensionAnswer,
    ExtensionRequest,
    Frame,
    Hello,
    Opcode,
    Output,
    ProtocolError,
    Resize,
    Resume,
    Role,
    Stdin,
    StdinClosed,
    codec_for,
    translate,
)

B = Opcode.BINARY
T = Opcode.TEXT
SERVER = Role.SERVER
CLIENT = Role.CLIENT
TP = TERMINAL_PROXY
TOKEN = "t" * 43
ERR = ProtocolError


def j(doc: dict[str, object]) -> Frame:
    return (T, json.dumps(doc, separators=(",", ":")).encode())


def test_codec_names_itself() -> None:
    codec = codec_for(TP, SERVER)
    assert codec.name == TP and codec.byte_stream is False
    assert TP not in UPSTREAM_SUBPROTOCOLS


# --- decode: what the gateway reads from a browser (SERVER) ------------------------------

SERVER_DECODE: list[tuple[Frame, list[Event] | type[Exception]]] = [
    ((B, b"ls\r"), [Stdin(b"ls\r")]),
    ((B, b""), []),
    ((B, b"\x00\x04\xff"), [Stdin(b"\x00\x04\xff")]),
    ((T, b'{"type":"resize","cols":80,"rows":24}'), [Resize(80, 24)]),
    ((T, b'{"type":"resize","cols":65535,"rows":0}'), [Resize(65535, 0)]),
    ((T, b'{"type":"resize","cols":65536,"rows":24}'), ERR),
    ((T, b'{"type":"resize","cols":-1,"rows":24}'), ERR),
    ((T, b'{"type":"resize","cols":80.0,"rows":24}'), ERR),
    ((T, b'{"type":"resize","cols":true,"rows":24}'), ERR),
    ((T, b'{"type":"resize","cols":80}'), ERR),
    (
        j({"type": "resume", "session": "abc", "token": TOKEN, "received": 5, "sent": 7}),
        [Resume("abc", TOKEN, 5, 7)],
    ),
    (j({"type": "resume", "session": "abc", "token": TOKEN, "received": 5}), ERR),
    (j({"type": "resume", "session": "", "token": TOKEN, "received": 0, "sent": 0}), ERR),
    (j({"type": "resume", "session": "a", "token": 5, "received": 0, "sent": 0}), ERR),
    (j({"type": "resume", "session": "a", "token": TOKEN, "received": -1, "sent": 0}), ERR),
    ((T, b'{"type":"ack","received":1234}'), [Ack(received=1234)]),
    ((T, b'{"type":"ack"}'), ERR),
    ((T, b'{"type":"extend"}'), [ExtensionRequest()]),
    ((T, b'{"type":"eof"}'), [StdinClosed()]),
    ((T, b'{"type":"something-newer","x":1}'), []),  # unknown types are ignored
    ((T, b"not json"), ERR),
    ((T, b"[1,2]"), ERR),
    ((T, b'{"cols":80}'), ERR),
    ((T, b"\xff\xfe"), ERR),
]


@pytest.mark.parametrize(("frame", "expected"), SERVER_DECODE)
def test_server_decode(frame: Frame, expected: list[Event] | type[Exception]) -> None:
    codec = codec_for(TP, SERVER)
    if isinstance(expected, list):
        assert list(codec.decode(*frame)) == expected
    else:
        with pytest.raises(expected):
            codec.decode(*frame)


# --- encode: what the gateway writes to a browser (SERVER) -------------------------------

SERVER_ENCODE: list[tuple[Event, list[Frame]]] = [
    (Output(b"hello"), [(B, b"hello")]),
    (Output(b"oops", STDERR), [(B, b"oops")]),  # one terminal: streams merged
    (Output(b""), []),
    (
        Hello("s1", TOKEN),
        [
            j(
                {
                    "type": "hello",
                    "session": "s1",
                    "token": TOKEN,
                    "offset": 0,
                    "input": 0,
                    "resumed": False,
                    "reset": False,
                    "expires_in": None,
                    "resume_grace": None,
                }
            )
        ],
    ),
    (
        Hello(
            "s1",
            TOKEN,
            offset=10,
            input=3,
            resumed=True,
            reset=True,
            expires_in=59.99991,
            resume_grace=300,
        ),
        [
            j(
                {
                    "type": "hello",
                    "session": "s1",
                    "token": TOKEN,
                    "offset": 10,
                    "input": 3,
                    "resumed": True,
                    "reset": True,
                    "expires_in": 60.0,
                    "resume_grace": 300,
                }
            )
        ],
    ),
    (Exit(3, "exit code 3"), [j({"type": "exit", "code": 3, "reason": "exit code 3"})]),
    (Exit(None, "pod gone"), [j({"type": "exit", "code": None, "reason": "pod gone"})]),
    (ExpiryWarning(300, True), [j({"type": "expiry", "expires_in": 300, "extendable": True})]),
    (
        ExtensionAnswer(True, 1800.0),
        [j({"type": "extension", "granted": True, "expires_in": 1800})],
    ),
    (
        ExtensionAnswer(False, reason="no extension available"),
        [j({"type": "extension", "granted": False, "reason": "no extension available"})],
    ),
    (Ack(input=12), [j({"type": "ack", "input": 12})]),
    (Ack(received=12), []),  # a browser's kind of ack
    (Stdin(b"x"), []),
    (Resize(1, 2), []),
    (StdinClosed(), []),
    (ExtensionRequest(), []),
    (Resume("s", TOKEN, 0, 0), []),
]


@pytest.mark.parametrize(("event", "expected"), SERVER_ENCODE)
def test_server_encode(event: Event, expected: list[Frame]) -> None:
    frames = list(codec_for(TP, SERVER).encode(event))
    assert [(op, json.loads(p)) if op == T else (op, p) for op, p in frames] == [
        (op, json.loads(p)) if op == T else (op, p) for op, p in expected
    ]


# --- the browser's side (CLIENT): what terminal-client.js speaks --------------------------

CLIENT_EVENTS: list[Event] = [
    Stdin(b"abc"),
    Resize(120, 40),
    Resume("s1", TOKEN, 100, 7),
    Ack(received=99),
    ExtensionRequest(),
    StdinClosed(),
]


@pytest.mark.parametrize("event", CLIENT_EVENTS)
def test_client_to_server_round_trip(event: Event) -> None:
    """What a browser encodes, the gateway decodes to the same event."""
    client, server = codec_for(TP, CLIENT), codec_for(TP, SERVER)
    decoded = [e for op, p in client.encode(event) for e in server.decode(op, p)]
    assert decoded == [event]


SERVER_EVENTS: list[Event] = [
    Output(b"\x1b[31mred\x1b[0m"),
    Hello("s1", TOKEN, offset=5, input=2, resumed=True, reset=False, expires_in=12.5),
    Exit(0, ""),
    Exit(None, "container vanished"),
    ExpiryWarning(30.0, False),
    ExtensionAnswer(True, 90.0),
    ExtensionAnswer(False, 10.0, "authorization does not allow it"),
    Ack(input=42),
]


@pytest.mark.parametrize("event", SERVER_EVENTS)
def test_server_to_client_round_trip(event: Event) -> None:
    client, server = codec_for(TP, CLIENT), codec_for(TP, SERVER)
    decoded = [e for op, p in server.encode(event) for e in client.decode(op, p)]
    assert decoded == [event]


def test_plain_output_agrees_with_decode() -> None:
    client = codec_for(TP, CLIENT)
    assert client.plain_output(B, b"abc") == (STDOUT, b"abc")
    assert list(client.decode(B, b"abc")) == [Output(b"abc")]
    assert client.plain_output(T, b'{"type":"ack","input":1}') is None
    assert client.plain_output(B, b"") is None
    assert codec_for(TP, SERVER).plain_output(B, b"abc") is None


# --- every pair with the upstream protocols -------------------------------------------------


@pytest.mark.parametrize("upstream", UPSTREAM_SUBPROTOCOLS)
def test_pair_stdin_and_resize_reach_upstream(upstream: str) -> None:
    browser_side = codec_for(TP, SERVER)
    upstream_side = codec_for(upstream, CLIENT)
    receiver = codec_for(upstream, SERVER)  # the upstream's own view of what we send

    def through(frame: Frame) -> list[Event]:
        return [
            e
            for op, p in translate(browser_side, upstream_side, *frame)
            for e in receiver.decode(op, p)
        ]

    assert through((B, b"echo hi\r")) == [Stdin(b"echo hi\r")]
    expected_resize = [] if upstream_side.byte_stream else [Resize(100, 30)]
    assert through((T, b'{"type":"resize","cols":100,"rows":30}')) == expected_resize


@pytest.mark.parametrize("upstream", UPSTREAM_SUBPROTOCOLS)
def test_pair_output_and_exit_reach_browser(upstream: str) -> None:
    upstream_side = codec_for(upstream, CLIENT)
    sender = codec_for(upstream, SERVER)  # the upstream writing
    browser_side = codec_for(TP, SERVER)
    browser = codec_for(TP, CLIENT)

    def through(event: Event) -> list[Event]:
        out: list[Event] = []
        for op, p in sender.encode(event):
            for bop, bp in translate(upstream_side, browser_side, op, p):
                out.extend(browser.decode(bop, bp))
        return out

    assert through(Output(b"out")) == [Output(b"out")]
    if not upstream_side.byte_stream:
        assert through(Output(b"err", STDERR)) == [Output(b"err")]
        exits = through(Exit(3, "command terminated with non-zero exit code: exit code 3"))
        assert [e.code for e in exits if isinstance(e, Exit)] == [3]


@pytest.mark.parametrize("upstream", UPSTREAM_SUBPROTOCOLS)
def test_session_control_never_reaches_upstream(upstream: str) -> None:
    """Resume, acks, extension requests stay in the gateway: no upstream encodes them."""
    codec = codec_for(upstream, CLIENT)
    for event in (Resume("s", TOKEN, 0, 0), Ack(received=1), ExtensionRequest()):
        assert list(codec.encode(event)) == []
    for control in (Hello("s", TOKEN), ExpiryWarning(1.0), ExtensionAnswer(True), Ack(input=1)):
        assert list(codec_for(upstream, SERVER).encode(control)) == []


@given(st.lists(st.binary(min_size=1, max_size=64), max_size=20))
def test_stdin_round_trip(chunks: list[bytes]) -> None:
    client, server = codec_for(TP, CLIENT), codec_for(TP, SERVER)
    frames = [f for chunk in chunks for f in client.encode(Stdin(chunk))]
    assert b"".join(e.data for op, p in frames for e in server.decode(op, p)) == b"".join(chunks)  # type: ignore[union-attr]
