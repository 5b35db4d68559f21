"""Table tests for the subprotocol codecs, keyed by subprotocol like Workhorse's wrappers_test.go.

Each codec is tested alone (decode and encode tables per role), then every browser/upstream
pair of the seven protocols through ``translate``, then round trips with Hypothesis.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terminal_proxy.protocols import (
    BROWSER_SUBPROTOCOLS,
    STDERR,
    STDOUT,
    UPSTREAM_SUBPROTOCOLS,
    Codec,
    Event,
    Exit,
    Frame,
    Opcode,
    Output,
    ProtocolError,
    Resize,
    Role,
    Stdin,
    StdinClosed,
    codec_for,
    exit_message,
    negotiate,
    parse_status,
    status_json,
    translate,
    upstream_offer,
)

B = Opcode.BINARY
T = Opcode.TEXT
SERVER = Role.SERVER
CLIENT = Role.CLIENT

GITLAB = "terminal.gitlab.com"
GITLAB64 = "base64.terminal.gitlab.com"
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4B64 = "v4.base64.channel.k8s.io"
V1 = "channel.k8s.io"
V1B64 = "base64.channel.k8s.io"

ALL = (GITLAB, GITLAB64, V5, V4, V4B64, V1, V1B64)
GITLABS = (GITLAB, GITLAB64)
K8S = (V5, V4, V4B64, V1, V1B64)
K8S_STATUS = (V5, V4, V4B64)  # stream 3 carries a metav1.Status document
K8S_TEXT = (V1, V1B64)  # stream 3 carries the failure message as text
K8S_BINARY = (V5, V4, V1)
K8S_BASE64 = (V4B64, V1B64)

# wrappers_test.go's messages.
MSG = b"foo bar"
MSG_B64 = b"Zm9vIGJhcg=="
KUBE_MSG = b"\x00foo bar"
KUBE_MSG_B64 = b"0Zm9vIGJhcg=="

RESIZE_JSON = b'{"Width":80,"Height":24}'
SUCCESS = b'{"metadata":{},"status":"Success"}'
KUBELET_TEXT_3 = (
    "command terminated with non-zero exit code: "
    "error executing command [sh -c exit 3], exit code 3"
)
KUBELET_DOC_3 = (
    b'{"metadata":{},"status":"Failure","message":"' + KUBELET_TEXT_3.encode() + b'",'
    b'"reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}'
)
INTERNAL_DOC = (
    b'{"metadata":{},"status":"Failure","message":"Internal error occurred: kubelet gone",'
    b'"reason":"InternalError","details":{"causes":[{"message":"kubelet gone"}]},"code":500}'
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def k8s(name: str, stream: int, data: bytes) -> Frame:
    """The wire frame for ``data`` on ``stream``, built independently of the codecs."""
    if name in K8S_BASE64:
        return (T, b"%d" % stream + b64(data))
    return (B, bytes((stream,)) + data)


def raw(name: str, data: bytes) -> Frame:
    """A GitLab byte-stream frame."""
    return (T, b64(data)) if name == GITLAB64 else (B, data)


def stdin_wire(name: str, data: bytes = MSG) -> Frame:
    return raw(name, data) if name in GITLABS else k8s(name, 0, data)


def output_wire(name: str, stream: int, data: bytes = MSG) -> Frame:
    """What a server sends for output on ``stream`` (merged into the stream for GitLab)."""
    return raw(name, data) if name in GITLABS else k8s(name, stream, data)


def stdin_closed_wire(name: str) -> Frame:
    if name == V5:
        return (B, b"\xff\x00")
    return stdin_wire(name, b"\x04")


def decode_all(codec: Codec, frames: Sequence[Frame]) -> list[Event]:
    return [event for opcode, payload in frames for event in codec.decode(opcode, payload)]


# --- registry ---------------------------------------------------------------------------


def test_subprotocol_lists() -> None:
    """The browser list is fixed and in order (our own protocol last, tested in
    tests/test_protocol_terminal_proxy.py); we dial the same set but our own."""
    assert (*ALL, "v1.terminal-proxy") == BROWSER_SUBPROTOCOLS
    assert set(UPSTREAM_SUBPROTOCOLS) == set(ALL)
    assert len(UPSTREAM_SUBPROTOCOLS) == len(ALL)


@pytest.mark.parametrize("role", [SERVER, CLIENT])
@pytest.mark.parametrize("name", ALL)
def test_codec_for_names_each_codec(name: str, role: Role) -> None:
    """codec_for gives a codec that knows its name and whether it is a byte stream."""
    codec = codec_for(name, role)
    assert codec.name == name
    assert codec.byte_stream is (name in GITLABS)


@pytest.mark.parametrize("name", ["", "v5.base64.channel.k8s.io", "V5.channel.k8s.io", "foo"])
def test_codec_for_unknown_name(name: str) -> None:
    """Unknown subprotocols (and no subprotocol) have no codec."""
    with pytest.raises(KeyError):
        codec_for(name, SERVER)


def test_codec_for_bad_role() -> None:
    """A role must be a Role."""
    with pytest.raises(ValueError):
        codec_for(V5, "server")  # type: ignore[arg-type]


# --- decode tables ----------------------------------------------------------------------

ERR = ProtocolError
DecodeCase = tuple[str, Role, Frame, "list[Event] | type[Exception]"]


def _decode(
    name: str, role: Role, frame: Frame, expected: list[Event] | type[Exception]
) -> DecodeCase:
    return (name, role, frame, expected)


DECODE_TABLE: list[DecodeCase] = [
    # terminal.gitlab.com, browser side
    _decode(GITLAB, SERVER, (B, MSG), [Stdin(MSG)]),
    _decode(GITLAB, SERVER, (T, MSG), [Stdin(MSG)]),
    _decode(GITLAB, SERVER, (B, b""), []),
    _decode(GITLAB, SERVER, (B, b"\x04"), [Stdin(b"\x04")]),
    _decode(GITLAB, SERVER, (B, KUBE_MSG), [Stdin(KUBE_MSG)]),
    # terminal.gitlab.com, upstream side
    _decode(GITLAB, CLIENT, (B, MSG), [Output(MSG, STDOUT)]),
    _decode(GITLAB, CLIENT, (T, MSG), [Output(MSG, STDOUT)]),
    _decode(GITLAB, CLIENT, (B, b""), []),
    # base64.terminal.gitlab.com
    _decode(GITLAB64, SERVER, (T, MSG_B64), [Stdin(MSG)]),
    _decode(GITLAB64, SERVER, (B, MSG_B64), [Stdin(MSG)]),
    _decode(GITLAB64, SERVER, (T, b""), []),
    _decode(GITLAB64, SERVER, (T, b"BA=="), [Stdin(b"\x04")]),
    _decode(GITLAB64, SERVER, (T, b"Zm9vIGJhcg"), ERR),  # missing padding
    _decode(GITLAB64, SERVER, (T, b"Zm9v IGJhcg=="), ERR),  # not in the alphabet
    _decode(GITLAB64, SERVER, (T, MSG), ERR),
    _decode(GITLAB64, CLIENT, (T, MSG_B64), [Output(MSG, STDOUT)]),
    _decode(GITLAB64, CLIENT, (B, MSG_B64), [Output(MSG, STDOUT)]),
    _decode(GITLAB64, CLIENT, (T, b"Zm9v!"), ERR),
]

for _name in K8S_BINARY:
    DECODE_TABLE += [
        # browser side: stdin, resize, close
        _decode(_name, SERVER, (B, KUBE_MSG), [Stdin(MSG)]),
        _decode(_name, SERVER, (T, KUBE_MSG), [Stdin(MSG)]),
        _decode(_name, SERVER, (B, b""), []),
        _decode(_name, SERVER, (B, b"\x00"), []),
        _decode(_name, SERVER, (B, b"\x00\x04"), [Stdin(b"\x04")]),
        _decode(_name, SERVER, (B, b"\x04" + RESIZE_JSON), [Resize(80, 24)]),
        _decode(_name, SERVER, (B, b'\x04{"Width":100,"Height":30}\n'), [Resize(100, 30)]),
        _decode(_name, SERVER, (B, b'\x04 {"Width":0,"Height":0} \r\n'), [Resize(0, 0)]),
        _decode(_name, SERVER, (B, b'\x04{"width":1,"HEIGHT":2,"x":"y"}'), [Resize(1, 2)]),
        _decode(_name, SERVER, (B, b'\x04{"Width":65535,"Height":65535}'), [Resize(65535, 65535)]),
        _decode(_name, SERVER, (B, b"\x04"), []),
        _decode(_name, SERVER, (B, b"\x04{"), ERR),
        _decode(_name, SERVER, (B, b"\x04not json"), ERR),
        _decode(_name, SERVER, (B, b"\x04[80,24]"), ERR),
        _decode(_name, SERVER, (B, b'\x04{"Width":80}'), ERR),
        _decode(_name, SERVER, (B, b'\x04{"Height":24}'), ERR),
        _decode(_name, SERVER, (B, b'\x04{"Width":-1,"Height":24}'), ERR),
        _decode(_name, SERVER, (B, b'\x04{"Width":65536,"Height":24}'), ERR),
        _decode(_name, SERVER, (B, b'\x04{"Width":80.0,"Height":24}'), ERR),
        _decode(_name, SERVER, (B, b'\x04{"Width":"80","Height":24}'), ERR),
        _decode(_name, SERVER, (B, b'\x04{"Width":true,"Height":24}'), ERR),
        _decode(_name, SERVER, (B, b'\x04{"Width":null,"Height":24}'), ERR),
        _decode(_name, SERVER, (B, b"\x04" + RESIZE_JSON + RESIZE_JSON), ERR),
        _decode(_name, SERVER, (B, b"\x04\xff\xfe"), ERR),
        # streams a client does not write are ignored
        _decode(_name, SERVER, (B, b"\x01out"), []),
        _decode(_name, SERVER, (B, b"\x02err"), []),
        _decode(_name, SERVER, (B, b"\x03" + SUCCESS), []),
        _decode(_name, SERVER, (B, b"\x07junk"), []),
        # upstream side: output and status
        _decode(_name, CLIENT, (B, b"\x01"), []),  # the initial empty frame
        _decode(_name, CLIENT, (B, b"\x02"), []),
        _decode(_name, CLIENT, (B, b"\x03"), []),
        _decode(_name, CLIENT, (B, b""), []),
        _decode(_name, CLIENT, (B, b"\x01foo bar"), [Output(MSG, STDOUT)]),
        _decode(_name, CLIENT, (T, b"\x01foo bar"), [Output(MSG, STDOUT)]),
        _decode(_name, CLIENT, (B, b"\x02foo bar"), [Output(MSG, STDERR)]),
        _decode(_name, CLIENT, (B, KUBE_MSG), []),  # stdin from a server
        _decode(_name, CLIENT, (B, b"\x04" + RESIZE_JSON), []),
        _decode(_name, CLIENT, (B, b"\xff\x01"), []),  # client-go: unknown stream
        _decode(_name, CLIENT, (B, b"\x07junk"), []),
    ]

for _name in K8S_BASE64:
    DECODE_TABLE += [
        _decode(_name, SERVER, (T, KUBE_MSG_B64), [Stdin(MSG)]),
        _decode(_name, SERVER, (B, KUBE_MSG_B64), [Stdin(MSG)]),
        _decode(_name, SERVER, (T, b""), []),
        _decode(_name, SERVER, (T, b"0"), []),
        _decode(_name, SERVER, (T, b"0BA=="), [Stdin(b"\x04")]),
        _decode(_name, SERVER, (T, b"4" + b64(RESIZE_JSON)), [Resize(80, 24)]),
        _decode(_name, SERVER, (T, b"4" + b64(b'{"Width":1,"Height":2}\n')), [Resize(1, 2)]),
        _decode(_name, SERVER, (T, b"4" + b64(b'{"Width":-1,"Height":2}')), ERR),
        _decode(_name, SERVER, (T, b"4"), []),
        _decode(_name, SERVER, (T, b"0Zm9vIGJhcg"), ERR),  # missing padding
        _decode(_name, SERVER, (T, b"0Zm9v\nIGJhcg=="), ERR),
        _decode(_name, SERVER, (T, b"0" + MSG), ERR),  # raw bytes on a base64 protocol
        _decode(_name, SERVER, (T, KUBE_MSG), []),  # stream "\x00" - "0": unknown, dropped
        _decode(_name, SERVER, (T, b"4!!!"), ERR),
        _decode(_name, SERVER, (T, b"1" + MSG_B64), []),
        _decode(_name, SERVER, (T, b"7!!!"), []),  # unknown stream: payload not examined
        _decode(_name, SERVER, (B, b"\xff\x00"), []),  # no close signal without v5
        _decode(_name, CLIENT, (T, b"1"), []),
        _decode(_name, CLIENT, (T, b"1" + MSG_B64), [Output(MSG, STDOUT)]),
        _decode(_name, CLIENT, (B, b"1" + MSG_B64), [Output(MSG, STDOUT)]),
        _decode(_name, CLIENT, (T, b"2" + MSG_B64), [Output(MSG, STDERR)]),
        _decode(_name, CLIENT, (T, b"1Zm9v!"), ERR),
        _decode(_name, CLIENT, (T, KUBE_MSG_B64), []),
        _decode(_name, CLIENT, (T, b"9" + MSG_B64), []),
    ]

# stream 255: the v5 close signal, and nothing for older versions
DECODE_TABLE += [
    _decode(V5, SERVER, (B, b"\xff\x00"), [StdinClosed()]),
    _decode(V5, SERVER, (T, b"\xff\x00"), [StdinClosed()]),
    _decode(V5, SERVER, (B, b"\xff"), ERR),
    _decode(V5, SERVER, (B, b"\xff\x01"), ERR),
    _decode(V5, SERVER, (B, b"\xff\x02"), ERR),
    _decode(V5, SERVER, (B, b"\xff\x00\x00"), ERR),
    _decode(V5, CLIENT, (B, b"\xff\x01"), []),
    _decode(V4, SERVER, (B, b"\xff\x00"), []),
    _decode(V4, SERVER, (B, b"\xff"), []),
    _decode(V1, SERVER, (B, b"\xff\x00"), []),
    _decode(V1, SERVER, (B, b"\xff\x01\x02"), []),
]

# stream 3 from the upstream
for _name in K8S_STATUS:
    DECODE_TABLE += [
        _decode(_name, CLIENT, k8s(_name, 3, SUCCESS), [Exit(0, "", SUCCESS)]),
        _decode(
            _name, CLIENT, k8s(_name, 3, KUBELET_DOC_3), [Exit(3, KUBELET_TEXT_3, KUBELET_DOC_3)]
        ),
        _decode(
            _name,
            CLIENT,
            k8s(_name, 3, INTERNAL_DOC),
            [Exit(None, "Internal error occurred: kubelet gone", INTERNAL_DOC)],
        ),
        _decode(_name, CLIENT, k8s(_name, 3, b"oops"), [Exit(None, "oops")]),
    ]
for _name in K8S_TEXT:
    DECODE_TABLE += [
        _decode(_name, CLIENT, k8s(_name, 3, KUBELET_TEXT_3.encode()), [Exit(3, KUBELET_TEXT_3)]),
        _decode(
            _name,
            CLIENT,
            k8s(_name, 3, b"container not found"),
            [Exit(None, "container not found")],
        ),
        _decode(_name, CLIENT, k8s(_name, 3, b"exit code 255"), [Exit(255, "exit code 255")]),
        _decode(_name, CLIENT, k8s(_name, 3, b"exit code 256"), [Exit(None, "exit code 256")]),
        _decode(_name, CLIENT, k8s(_name, 3, b"exit code 0"), [Exit(None, "exit code 0")]),
        _decode(_name, CLIENT, k8s(_name, 3, b"exit code x"), [Exit(None, "exit code x")]),
        # a v1 server's stream 3 is text even when it looks like a Status
        _decode(_name, CLIENT, k8s(_name, 3, SUCCESS), [Exit(None, SUCCESS.decode())]),
    ]


def _decode_id(case: DecodeCase) -> str:
    name, role, (opcode, payload), _ = case
    return f"{name}-{role.value}-{opcode.name}-{payload[:24]!r}"


@pytest.mark.parametrize(
    ("name", "role", "frame", "expected"), DECODE_TABLE, ids=[_decode_id(c) for c in DECODE_TABLE]
)
def test_decode(
    name: str, role: Role, frame: Frame, expected: list[Event] | type[Exception]
) -> None:
    """Each codec decodes a received frame into exactly these events, or refuses it."""
    codec = codec_for(name, role)
    if isinstance(expected, list):
        assert list(codec.decode(*frame)) == expected
    else:
        with pytest.raises(expected):
            codec.decode(*frame)


# --- encode tables ----------------------------------------------------------------------

EncodeCase = tuple[str, Role, Event, "list[Frame]"]


def _encode(name: str, role: Role, event: Event, expected: list[Frame]) -> EncodeCase:
    return (name, role, event, expected)


ENCODE_TABLE: list[EncodeCase] = [
    _encode(GITLAB, SERVER, Output(MSG), [(B, MSG)]),
    _encode(GITLAB, SERVER, Output(MSG, STDERR), [(B, MSG)]),
    _encode(GITLAB, SERVER, Output(b""), []),
    _encode(GITLAB, SERVER, Exit(3, "x"), []),
    _encode(GITLAB, SERVER, Exit(0), []),
    _encode(GITLAB, SERVER, Resize(80, 24), []),
    _encode(GITLAB, SERVER, StdinClosed(), []),
    _encode(GITLAB, SERVER, Stdin(MSG), []),
    _encode(GITLAB, CLIENT, Stdin(MSG), [(B, MSG)]),
    _encode(GITLAB, CLIENT, Stdin(b""), []),
    _encode(GITLAB, CLIENT, StdinClosed(), [(B, b"\x04")]),
    _encode(GITLAB, CLIENT, Resize(80, 24), []),
    _encode(GITLAB, CLIENT, Exit(0), []),
    _encode(GITLAB, CLIENT, Output(MSG), []),
    _encode(GITLAB64, SERVER, Output(MSG), [(T, MSG_B64)]),
    _encode(GITLAB64, SERVER, Output(MSG, STDERR), [(T, MSG_B64)]),
    _encode(GITLAB64, SERVER, Output(b""), []),
    _encode(GITLAB64, SERVER, Exit(1, "x"), []),
    _encode(GITLAB64, CLIENT, Stdin(MSG), [(T, MSG_B64)]),
    _encode(GITLAB64, CLIENT, StdinClosed(), [(T, b"BA==")]),
    _encode(GITLAB64, CLIENT, Resize(80, 24), []),
]

for _name in K8S:
    ENCODE_TABLE += [
        _encode(_name, SERVER, Output(MSG), [k8s(_name, 1, MSG)]),
        _encode(_name, SERVER, Output(MSG, STDERR), [k8s(_name, 2, MSG)]),
        _encode(_name, SERVER, Output(b""), []),
        _encode(_name, SERVER, Output(b"", STDERR), []),
        _encode(_name, SERVER, Stdin(MSG), []),
        _encode(_name, SERVER, Resize(80, 24), []),
        _encode(_name, SERVER, StdinClosed(), []),
        _encode(_name, CLIENT, Stdin(MSG), [k8s(_name, 0, MSG)]),
        _encode(_name, CLIENT, Stdin(b""), []),
        _encode(_name, CLIENT, Resize(80, 24), [k8s(_name, 4, RESIZE_JSON)]),
        _encode(_name, CLIENT, Resize(0, 65535), [k8s(_name, 4, b'{"Width":0,"Height":65535}')]),
        _encode(_name, CLIENT, Output(MSG), []),
        _encode(_name, CLIENT, Exit(3, "x"), []),
    ]

ENCODE_TABLE += [
    # wire literals, as in wrappers_test.go
    _encode(V1, CLIENT, Stdin(MSG), [(B, KUBE_MSG)]),
    _encode(V1B64, CLIENT, Stdin(MSG), [(T, KUBE_MSG_B64)]),
    _encode(V4B64, CLIENT, Resize(80, 24), [(T, b"4eyJXaWR0aCI6ODAsIkhlaWdodCI6MjR9")]),
    # end of input: v5 close signal, EOT on stdin for the others
    _encode(V5, CLIENT, StdinClosed(), [(B, b"\xff\x00")]),
    _encode(V4, CLIENT, StdinClosed(), [(B, b"\x00\x04")]),
    _encode(V1, CLIENT, StdinClosed(), [(B, b"\x00\x04")]),
    _encode(V4B64, CLIENT, StdinClosed(), [(T, b"0BA==")]),
    _encode(V1B64, CLIENT, StdinClosed(), [(T, b"0BA==")]),
    # exit on stream 3: v4/v5 a Status document
    _encode(V5, SERVER, Exit(0), [(B, b"\x03" + SUCCESS)]),
    _encode(V4, SERVER, Exit(0, "ignored"), [(B, b"\x03" + SUCCESS)]),
    _encode(V4B64, SERVER, Exit(0), [(T, b"3eyJtZXRhZGF0YSI6e30sInN0YXR1cyI6IlN1Y2Nlc3MifQ==")]),
    _encode(V5, SERVER, Exit(3, KUBELET_TEXT_3), [(B, b"\x03" + KUBELET_DOC_3)]),
    _encode(V5, SERVER, Exit(3), [(B, b"\x03" + status_json(3, exit_message(3)))]),
    _encode(V4, SERVER, Exit(None, "x", status=INTERNAL_DOC), [(B, b"\x03" + INTERNAL_DOC)]),
    _encode(
        V5, SERVER, Exit(0, "", status=b'{"status":"Success"}'), [(B, b'\x03{"status":"Success"}')]
    ),
    _encode(V4B64, SERVER, Exit(3, "", status=KUBELET_DOC_3), [(T, b"3" + b64(KUBELET_DOC_3))]),
    _encode(V4, SERVER, Exit(None, "boom"), [(B, b"\x03" + status_json(None, "boom"))]),
    # exit on stream 3: v1 the message text on failure only
    _encode(V1, SERVER, Exit(0), []),
    _encode(V1, SERVER, Exit(0, "", status=SUCCESS), []),
    _encode(V1B64, SERVER, Exit(0), []),
    _encode(V1, SERVER, Exit(3, KUBELET_TEXT_3), [(B, b"\x03" + KUBELET_TEXT_3.encode())]),
    _encode(
        V1,
        SERVER,
        Exit(3),
        [(B, b"\x03command terminated with non-zero exit code: exit code 3")],
    ),
    _encode(V1, SERVER, Exit(None, "boom", status=INTERNAL_DOC), [(B, b"\x03boom")]),
    _encode(V1, SERVER, Exit(None), [(B, b"\x03unknown error")]),
    _encode(V1B64, SERVER, Exit(3, "héllo"), [(T, b"3" + b64("héllo".encode()))]),
]


def _encode_id(case: EncodeCase) -> str:
    name, role, event, _ = case
    return f"{name}-{role.value}-{event!r}"[:90]


@pytest.mark.parametrize(
    ("name", "role", "event", "expected"), ENCODE_TABLE, ids=[_encode_id(c) for c in ENCODE_TABLE]
)
def test_encode(name: str, role: Role, event: Event, expected: list[Frame]) -> None:
    """Each codec encodes an event into exactly these frames (none when inexpressible)."""
    assert list(codec_for(name, role).encode(event)) == expected


@pytest.mark.parametrize("name", K8S)
def test_encode_rejects_output_on_other_streams(name: str) -> None:
    """Output only travels on stdout or stderr."""
    with pytest.raises(ValueError):
        codec_for(name, SERVER).encode(Output(MSG, 3))


# --- status documents -------------------------------------------------------------------

STATUS_JSON_TABLE: list[tuple[int | None, str, bytes]] = [
    (0, "", SUCCESS),
    (0, "ignored", SUCCESS),
    (3, KUBELET_TEXT_3, KUBELET_DOC_3),
    (
        3,
        "",
        b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit '
        b'code: exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":'
        b'"ExitCode","message":"3"}]}}',
    ),
    (
        255,
        "command terminated with non-zero exit code: command terminated with exit code 255",
        b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit '
        b'code: command terminated with exit code 255","reason":"NonZeroExitCode","details":'
        b'{"causes":[{"reason":"ExitCode","message":"255"}]}}',
    ),
    (
        None,
        "Internal error occurred: kubelet gone",
        b'{"metadata":{},"status":"Failure","message":"Internal error occurred: kubelet gone",'
        b'"reason":"InternalError","details":{"causes":[{"message":"Internal error occurred: '
        b'kubelet gone"}]},"code":500}',
    ),
    (
        None,
        "",
        b'{"metadata":{},"status":"Failure","message":"unknown error","reason":"InternalError",'
        b'"details":{"causes":[{"message":"unknown error"}]},"code":500}',
    ),
    # Go's json.Marshal escaping: HTML characters, U+2028/9, controls; UTF-8 kept
    (
        None,
        'a<b>&"c"\\\b\f\n\r\t\x01\x7f\u2028\u2029é\ud800',
        b'{"metadata":{},"status":"Failure","message":"a\\u003cb\\u003e\\u0026\\"c\\"\\\\\\b'
        b'\\f\\n\\r\\t\\u0001\x7f\\u2028\\u2029\xc3\xa9\xef\xbf\xbd","reason":"InternalError",'
        b'"details":{"causes":[{"message":"a\\u003cb\\u003e\\u0026\\"c\\"\\\\\\b\\f\\n\\r\\t'
        b'\\u0001\x7f\\u2028\\u2029\xc3\xa9\xef\xbf\xbd"}]},"code":500}',
    ),
]


@pytest.mark.parametrize(("code", "message", "expected"), STATUS_JSON_TABLE)
def test_status_json(code: int | None, message: str, expected: bytes) -> None:
    """status_json writes exactly what json.Marshal(metav1.Status) writes."""
    assert status_json(code, message) == expected


@pytest.mark.parametrize("code", [0, 1, 2, 3, 127, 128, 255])
def test_status_json_round_trips(code: int) -> None:
    """parse_status reads back every exit code status_json writes."""
    document = status_json(code, "")
    assert parse_status(document) == Exit(code, exit_message(code) if code else "", document)


def _failure(causes: bytes, *, message: bytes = b"m") -> bytes:
    return (
        b'{"metadata":{},"status":"Failure","message":"' + message + b'",'
        b'"reason":"NonZeroExitCode","details":{"causes":' + causes + b"}}"
    )


PARSE_STATUS_TABLE: list[tuple[bytes, int | None, str, bool]] = [
    # payload, code, message, whether Exit.status keeps the payload
    (SUCCESS, 0, "", True),
    (b'{"status":"Success"}\n', 0, "", True),
    (b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"}', 0, "", True),
    (b'{"STATUS":"Success"}', 0, "", True),  # Go matches keys case-insensitively
    (KUBELET_DOC_3, 3, KUBELET_TEXT_3, True),
    (_failure(b'[{"reason":"ExitCode","message":"255"}]'), 255, "m", True),
    (_failure(b'[{"reason":"ExitCode","message":"0"}]'), 0, "m", True),
    (_failure(b'[{"reason":"ExitCode","message":"007"}]'), 7, "m", True),
    (_failure(b'[{"reason":"ExitCode","message":"3"}]', message=b""), 3, exit_message(3), True),
    (
        _failure(b'[{"reason":"Other","message":"9"},{"reason":"ExitCode","message":"4"}]'),
        4,
        "m",
        True,
    ),
    (
        _failure(b'[{"reason":"ExitCode","message":"256"}]'),
        None,
        'error stream protocol error: invalid exit code value "256"',
        True,
    ),
    (
        _failure(b'[{"reason":"ExitCode","message":"-1"}]'),
        None,
        'error stream protocol error: invalid exit code value "-1"',
        True,
    ),
    (
        _failure(b'[{"reason":"ExitCode","message":"+3"}]'),
        None,
        'error stream protocol error: invalid exit code value "+3"',
        True,
    ),
    (
        _failure(b'[{"reason":"ExitCode","message":" 3"}]'),
        None,
        'error stream protocol error: invalid exit code value " 3"',
        True,
    ),
    (
        _failure(b'[{"reason":"ExitCode"}]'),
        None,
        'error stream protocol error: invalid exit code value ""',
        True,
    ),
    (
        _failure(b'[{"reason":"Other","message":"3"}]'),
        None,
        "error stream protocol error: no ExitCode cause given",
        True,
    ),
    (_failure(b"[]"), None, "error stream protocol error: no ExitCode cause given", True),
    (
        b'{"status":"Failure","message":"m","reason":"NonZeroExitCode"}',
        None,
        "error stream protocol error: details must be set",
        True,
    ),
    (INTERNAL_DOC, None, "Internal error occurred: kubelet gone", True),
    (b'{"status":"Failure","reason":"Forbidden"}', None, "Forbidden", True),
    (b'{"status":"Failure"}', None, "unknown error", True),
    (b'{"status":"Weird"}', None, "error stream protocol error: unknown error", True),
    (b"{}", None, "error stream protocol error: unknown error", True),
    (b"oops", None, "oops", False),
    (b'[{"status":"Success"}]', None, '[{"status":"Success"}]', False),
    (b'"Success"', None, '"Success"', False),
    (b"\xff oops", None, "\ufffd oops", False),
    (b"   ", None, "error stream protocol error: '   '", False),
]


@pytest.mark.parametrize(("payload", "code", "message", "keeps"), PARSE_STATUS_TABLE)
def test_parse_status(payload: bytes, code: int | None, message: str, keeps: bool) -> None:
    """parse_status reads a stream-3 document as client-go's errorDecoderV4 does."""
    assert parse_status(payload) == Exit(code, message, payload if keeps else None)


# --- negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "supported", "expected"),
    [
        ([V5], BROWSER_SUBPROTOCOLS, V5),
        ([GITLAB], BROWSER_SUBPROTOCOLS, GITLAB),
        ([GITLAB64, GITLAB], BROWSER_SUBPROTOCOLS, GITLAB64),  # the client's order wins
        ([V1, V5], BROWSER_SUBPROTOCOLS, V1),
        (["base64url.bearer.authorization.k8s.io.czNjcmV0", V4], BROWSER_SUBPROTOCOLS, V4),
        (["foo", V1B64, V1], BROWSER_SUBPROTOCOLS, V1B64),
        (["v5.base64.channel.k8s.io", V4B64], BROWSER_SUBPROTOCOLS, V4B64),
        (["V5.channel.k8s.io"], BROWSER_SUBPROTOCOLS, None),  # names are case-sensitive
        (["foo"], BROWSER_SUBPROTOCOLS, None),
        ([], BROWSER_SUBPROTOCOLS, None),
        ([V5, V4, V1], [V1, V4], V4),
        ([V5], [], None),
    ],
)
def test_negotiate(offered: list[str], supported: Sequence[str], expected: str | None) -> None:
    """negotiate picks the first offered subprotocol we support, in the client's order."""
    assert negotiate(offered, supported) == expected


@pytest.mark.parametrize(
    ("named", "offer_v5", "expected"),
    [
        ([V1], True, [V5, V4, V1]),
        ([V1], False, [V1]),
        ([V1B64], True, [V4B64, V1B64]),
        ([V1B64], False, [V1B64]),
        ([V1, V1B64], True, [V5, V4, V1, V4B64, V1B64]),
        ([GITLAB], True, [GITLAB]),
        ([GITLAB64, GITLAB], True, [GITLAB64, GITLAB]),
        (["foo", V1, "bar"], True, ["foo", V5, V4, V1, "bar"]),
        ([V4, V1], True, [V4, V5, V1]),
        ([V5], True, [V5]),
        ([V5], False, [V5]),
        ([V1, V1], True, [V5, V4, V1]),
        ([V1, V1], False, [V1]),
        ([V1, V5], True, [V5, V4, V1]),
        ([], True, []),
    ],
)
def test_upstream_offer(named: list[str], offer_v5: bool, expected: list[str]) -> None:
    """upstream_offer adds v5/v4 ahead of channel.k8s.io and v4 ahead of its base64 form."""
    assert upstream_offer(named, offer_v5=offer_v5) == expected


def test_translate_decodes_then_encodes() -> None:
    """translate is decode with the source codec, then encode of each event with the other."""
    src = codec_for(V5, SERVER)
    dst = codec_for(V1B64, CLIENT)
    assert translate(src, dst, B, KUBE_MSG) == [(T, KUBE_MSG_B64)]
    assert translate(src, dst, B, b"\x01ignored") == []


# --- every browser/upstream pair --------------------------------------------------------

PAIRS = list(itertools.product(ALL, ALL))


def _pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


def _pairs(browsers: Sequence[str], upstreams: Sequence[str]) -> list[tuple[str, str]]:
    return [(b, u) for b, u in PAIRS if b in browsers and u in upstreams]


def _codecs(browser: str, upstream: str) -> tuple[Codec, Codec]:
    return codec_for(browser, SERVER), codec_for(upstream, CLIENT)


@pytest.mark.parametrize(("browser", "upstream"), PAIRS, ids=map(_pair_id, PAIRS))
def test_pair_stdin(browser: str, upstream: str) -> None:
    """Stdin typed in the browser arrives as the upstream's stdin frame."""
    b, u = _codecs(browser, upstream)
    assert translate(b, u, *stdin_wire(browser)) == [stdin_wire(upstream)]
    assert translate(b, u, *stdin_wire(browser, b"\x1b[A\r")) == [stdin_wire(upstream, b"\x1b[A\r")]


@pytest.mark.parametrize(("browser", "upstream"), PAIRS, ids=map(_pair_id, PAIRS))
def test_pair_stdout(browser: str, upstream: str) -> None:
    """Upstream stdout arrives at the browser; the initial empty frame makes nothing."""
    b, u = _codecs(browser, upstream)
    assert translate(u, b, *output_wire(upstream, STDOUT)) == [output_wire(browser, STDOUT)]
    if upstream in K8S:
        assert translate(u, b, *k8s(upstream, STDOUT, b"")) == []


STDERR_PAIRS = _pairs(ALL, K8S)


@pytest.mark.parametrize(("browser", "upstream"), STDERR_PAIRS, ids=map(_pair_id, STDERR_PAIRS))
def test_pair_stderr(browser: str, upstream: str) -> None:
    """Upstream stderr stays on stderr for k8s browsers, merges into GitLab's byte stream."""
    b, u = _codecs(browser, upstream)
    assert translate(u, b, *k8s(upstream, STDERR, MSG)) == [output_wire(browser, STDERR)]


RESIZE_PAIRS = _pairs(K8S, ALL)


@pytest.mark.parametrize(("browser", "upstream"), RESIZE_PAIRS, ids=map(_pair_id, RESIZE_PAIRS))
def test_pair_resize(browser: str, upstream: str) -> None:
    """A k8s browser's resize becomes the upstream's resize frame (none for GitLab)."""
    b, u = _codecs(browser, upstream)
    frame = k8s(browser, 4, b'{"Width":120,"Height":40}\n')
    expected = [] if upstream in GITLABS else [k8s(upstream, 4, b'{"Width":120,"Height":40}')]
    assert translate(b, u, *frame) == expected


def _exit_wire(upstream: str, code: int) -> Frame:
    """How a Kubernetes upstream reports exit ``code`` (kubelet wording)."""
    if upstream in K8S_STATUS:
        return k8s(upstream, 3, SUCCESS if code == 0 else KUBELET_DOC_3)
    return k8s(upstream, 3, KUBELET_TEXT_3.encode())


EXIT_PAIRS = [(b, u, 3) for b, u in _pairs(ALL, K8S)] + [
    (b, u, 0) for b, u in _pairs(ALL, K8S_STATUS)
]


@pytest.mark.parametrize(
    ("browser", "upstream", "code"),
    EXIT_PAIRS,
    ids=[f"{b}->{u}-exit{c}" for b, u, c in EXIT_PAIRS],
)
def test_pair_exit(browser: str, upstream: str, code: int) -> None:
    """An upstream exit status reaches k8s browsers on stream 3, never GitLab browsers."""
    b, u = _codecs(browser, upstream)
    frames = translate(u, b, *_exit_wire(upstream, code))
    if browser in GITLABS:
        assert frames == []
    elif browser in K8S_STATUS:
        assert frames == [k8s(browser, 3, SUCCESS if code == 0 else KUBELET_DOC_3)]
    elif code == 0:
        assert frames == []
    else:
        assert frames == [k8s(browser, 3, KUBELET_TEXT_3.encode())]


CLOSE_PAIRS = _pairs([V5], ALL)


@pytest.mark.parametrize(("browser", "upstream"), CLOSE_PAIRS, ids=map(_pair_id, CLOSE_PAIRS))
def test_pair_stdin_closed(browser: str, upstream: str) -> None:
    """A v5 browser's close signal becomes v5's close signal or EOT on the upstream's stdin."""
    b, u = _codecs(browser, upstream)
    assert translate(b, u, B, b"\xff\x00") == [stdin_closed_wire(upstream)]


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_stdin_round_trip(name: str, chunks: list[bytes]) -> None:
    """Stdin encoded by a client decodes to the same bytes at the server, chunk by chunk."""
    frames = [f for chunk in chunks for f in codec_for(name, CLIENT).encode(Stdin(chunk))]
    events = decode_all(codec_for(name, SERVER), frames)
    assert events == [Stdin(chunk) for chunk in chunks if chunk]


@pytest.mark.parametrize("name", ALL)
@given(
    chunks=st.lists(
        st.tuples(st.binary(max_size=64), st.sampled_from([STDOUT, STDERR])), max_size=8
    )
)
def test_output_round_trip(name: str, chunks: list[tuple[bytes, int]]) -> None:
    """Output encoded by a server decodes to the same bytes and stream at the client."""
    server = codec_for(name, SERVER)
    frames = [f for data, stream in chunks for f in server.encode(Output(data, stream))]
    events = decode_all(codec_for(name, CLIENT), frames)
    merged = name in GITLABS
    assert events == [Output(d, STDOUT if merged else s) for d, s in chunks if d]


# The hot path's shortcut ------------------------------------------------------------------

PLAIN_PAYLOADS = [
    b"",
    b"\x00",
    b"\x01",
    b"\x01hello",
    b"\x02oops",
    b"\x03" + b'{"metadata":{},"status":"Success"}',
    b"\x04{}",
    b"\xff\x00",
    b"1aGVsbG8=",
    b"2b29wcw==",
    b"hello",
    bytes(range(256)),
]


@pytest.mark.parametrize("opcode", [Opcode.BINARY, Opcode.TEXT])
@pytest.mark.parametrize("role", [SERVER, CLIENT])
@pytest.mark.parametrize("name", ALL)
def test_plain_output_agrees_with_decode(name: str, role: Role, opcode: Opcode) -> None:
    """plain_output() answers only when decode() gives exactly one Output, and the same one."""
    codec = codec_for(name, role)
    for payload in PLAIN_PAYLOADS:
        shortcut = codec.plain_output(opcode, payload)
        if shortcut is None:
            continue
        stream, data = shortcut
        assert codec.decode(opcode, payload) == (Output(data, stream),), payload


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        ("v5.channel.k8s.io", b"\x01hi", (STDOUT, b"hi")),
        ("v4.channel.k8s.io", b"\x02err", (STDERR, b"err")),
        ("channel.k8s.io", b"\x01hi", (STDOUT, b"hi")),
        ("terminal.gitlab.com", b"hi", (STDOUT, b"hi")),
        ("v5.channel.k8s.io", b"\x01", None),
        ("v5.channel.k8s.io", b"\x03{}", None),
        ("base64.channel.k8s.io", b"1aGk=", None),
        ("base64.terminal.gitlab.com", b"aGk=", None),
    ],
)
def test_plain_output_takes_the_common_frames(
    name: str, payload: bytes, expected: tuple[int, bytes] | None
) -> None:
    """Upstream output frames of the binary protocols take the shortcut; the rest decode."""
    assert codec_for(name, CLIENT).plain_output(Opcode.BINARY, payload) == expected
