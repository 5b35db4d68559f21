"""The native contract's JSON Schema (docs/schemas/) agrees with the parser.

The parser (terminal_proxy/authorization/native.py) is what the gateway runs; the schema is
what web apps are told to produce. Every documented example and every document the parser
accepts must validate; every document the schema refuses must be refused by the parser.
The parser also refuses a few things no JSON Schema can say (which host and port, header
names the gateway owns, names given twice in different case): those are listed in
SEMANTIC and must stay valid for the schema, so the list says exactly where they differ.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema  # type: ignore[import-untyped]
import pytest
import trustme

from terminal_proxy.authorization import Grant
from terminal_proxy.authorization.native import NativeAuthorizer
from terminal_proxy.config import load_config
from terminal_proxy.errors import InvalidAuthorization
from terminal_proxy.httpclient import OriginClient

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "docs" / "schemas" / "native-authorization-response.schema.json"
DOC_PATH = ROOT / "docs" / "authorization-api.md"
CA_PEM = trustme.CA().cert_pem.bytes().decode()
URL = "wss://kube.example.com:6443/api/v1/namespaces/prod/pods/web-1/exec?container=app"
CONNECTION = {"url": URL, "subprotocols": ["channel.k8s.io"]}


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def parser() -> Iterator[NativeAuthorizer]:
    config = load_config("authorization: {backend: 'http://127.0.0.1:1', contract: native}\n")
    # parse() never sends a request: no HTTP client (nor event loop) is needed.
    yield NativeAuthorizer(config.authorization, cast(OriginClient, object()))


def parse(parser: NativeAuthorizer, doc: Any) -> Grant:
    return parser.parse("application/json", json.dumps(doc).encode())


def with_connection(**fields: Any) -> dict[str, Any]:
    return {"connection": {**CONNECTION, **fields}}


def documented_examples() -> list[dict[str, Any]]:
    """The JSON blocks of the native contract's section of docs/authorization-api.md, and
    the inline recording example completed into a document."""
    text = DOC_PATH.read_text()
    section = text.split("## The native contract", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]
    (recording,) = re.findall(r'`("recording": \{.*?\})`', section)
    blocks.append({**json.loads("{" + recording + "}"), "connection": CONNECTION})
    assert len(blocks) >= 2
    return blocks


def real_pem(doc: dict[str, Any]) -> dict[str, Any]:
    """The docs abbreviate ca_pem ("-----BEGIN CERTIFICATE-----\\n..."); the parser checks it
    is a certificate, so the parser gets a real one in its place."""
    connection = doc["connection"]
    if isinstance(connection.get("ca_pem"), str) and connection["ca_pem"].endswith("..."):
        return {**doc, "connection": {**connection, "ca_pem": CA_PEM}}
    return doc


def test_documented_examples_validate_and_parse(
    validator: jsonschema.protocols.Validator, parser: NativeAuthorizer
) -> None:
    for doc in documented_examples():
        validator.validate(doc)
        grant = parse(parser, real_pem(doc))
        assert grant.details.url.startswith("wss://kube.example.com:6443/")


ACCEPTED: dict[str, Any] = {
    "minimal": {"connection": CONNECTION},
    "version 1": {"version": 1, **with_connection()},
    "version 1.0": {"version": 1.0, **with_connection()},
    "ws url": with_connection(url="ws://127.0.0.1:8080/x"),
    "url with default port": with_connection(url="wss://kube.example.com/x"),
    "several subprotocols": with_connection(subprotocols=["v4.channel.k8s.io", "base64.x"]),
    "headers": with_connection(headers={"Authorization": ["Bearer t"], "X-A": ["1", "2"]}),
    "empty header list": with_connection(headers={"X-A": []}),
    "null headers": with_connection(headers=None),
    "ca_pem": with_connection(ca_pem=CA_PEM),
    "empty ca_pem": with_connection(ca_pem=""),
    "null ca_pem": with_connection(ca_pem=None),
    "max_session_time": with_connection(max_session_time=600),
    "fractional max_session_time": with_connection(max_session_time=0.5),
    "zero max_session_time": with_connection(max_session_time=0),
    "null max_session_time": with_connection(max_session_time=None),
    "a year's max_session_time": with_connection(max_session_time=366 * 24 * 3600),
    "user by id": {"user": {"id": 42}, **with_connection()},
    "user by string id": {"user": {"id": "42"}, **with_connection()},
    "user with username": {
        "user": {"username": "alice", "groups": ["a", "b"]},
        **with_connection(),
    },
    "empty user": {"user": {}, **with_connection()},
    "null user": {"user": None, **with_connection()},
    "null username": {"user": {"id": "42", "username": None}, **with_connection()},
    "recording": {"recording": {"enabled": True}, **with_connection()},
    "recording flags": {
        "recording": {"enabled": False, "required": True, "input": False},
        **with_connection(),
    },
    "recording null flags": {
        "recording": {"enabled": True, "required": None, "input": None},
        **with_connection(),
    },
    "null recording": {"recording": None, **with_connection()},
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_by_the_parser_and_valid_for_the_schema(
    name: str, validator: jsonschema.protocols.Validator, parser: NativeAuthorizer
) -> None:
    parse(parser, ACCEPTED[name])
    validator.validate(ACCEPTED[name])


REFUSED: dict[str, Any] = {
    "not an object": [CONNECTION],
    "no connection": {"version": 1},
    "connection not an object": {"connection": URL},
    "unknown top-level field": {"connection": CONNECTION, "extra": 1},
    "unknown connection field": with_connection(Url=URL),
    "version 2": {"version": 2, **with_connection()},
    "version as a string": {"version": "1", **with_connection()},
    "version true": {"version": True, **with_connection()},
    "no url": {"connection": {"subprotocols": ["channel.k8s.io"]}},
    "empty url": with_connection(url=""),
    "url not a string": with_connection(url=1),
    "https url": with_connection(url="https://kube.example.com:6443/x"),
    "no subprotocols": {"connection": {"url": URL}},
    "empty subprotocols": with_connection(subprotocols=[]),
    "subprotocol with a space": with_connection(subprotocols=["a b"]),
    "subprotocol not a string": with_connection(subprotocols=[1]),
    "headers as a list": with_connection(headers=[["Authorization", "Bearer t"]]),
    "header value not a list": with_connection(headers={"Authorization": "Bearer t"}),
    "header value not a string": with_connection(headers={"X-A": [1]}),
    "header name not a token": with_connection(headers={"X A": ["1"]}),
    "header value with a newline": with_connection(headers={"X-A": ["a\r\nX-B: b"]}),
    "ca_pem not a string": with_connection(ca_pem=["x"]),
    "negative max_session_time": with_connection(max_session_time=-1),
    "max_session_time over a year": with_connection(max_session_time=366 * 24 * 3600 + 1),
    "max_session_time as a string": with_connection(max_session_time="600"),
    "max_session_time true": with_connection(max_session_time=True),
    "user not an object": {"user": "alice", **with_connection()},
    "unknown user field": {"user": {"name": "alice"}, **with_connection()},
    "username not a string": {"user": {"username": 42}, **with_connection()},
    "id true": {"user": {"id": True}, **with_connection()},
    "id true beside a username": {"user": {"id": True, "username": "a"}, **with_connection()},
    "id a fraction": {"user": {"id": 4.2}, **with_connection()},
    "groups not a list": {"user": {"groups": "devs"}, **with_connection()},
    "null groups": {"user": {"groups": None}, **with_connection()},
    "group not a string": {"user": {"groups": [1]}, **with_connection()},
    "recording not an object": {"recording": True, **with_connection()},
    "recording without enabled": {"recording": {"required": True}, **with_connection()},
    "recording enabled null": {"recording": {"enabled": None}, **with_connection()},
    "recording enabled a string": {"recording": {"enabled": "yes"}, **with_connection()},
    "unknown recording field": {"recording": {"enabled": True, "x": 1}, **with_connection()},
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_by_the_parser_and_by_the_schema(
    name: str, validator: jsonschema.protocols.Validator, parser: NativeAuthorizer
) -> None:
    with pytest.raises(InvalidAuthorization):
        parse(parser, REFUSED[name])
    assert not validator.is_valid(REFUSED[name])


# What the parser refuses and the schema cannot say; docs/authorization-api.md ("What the
# gateway does with the details") describes each.
SEMANTIC: dict[str, Any] = {
    "url without a host": with_connection(url="wss:///x"),
    "url with user-info": with_connection(url="wss://user:pw@kube.example.com:6443/x"),
    "header the gateway owns": with_connection(headers={"Sec-WebSocket-Protocol": ["x"]}),
    "hop-by-hop header": with_connection(headers={"Connection": ["close"]}),
    "x-forwarded-for": with_connection(headers={"X-Forwarded-For": ["10.0.0.1"]}),
    "header given twice": with_connection(headers={"X-A": ["1"], "x-a": ["2"]}),
    "ca_pem not a certificate": with_connection(ca_pem="-----BEGIN CERTIFICATE-----\n..."),
    "integral id written as a fraction": {"user": {"id": 42.0}, **with_connection()},
}


@pytest.mark.parametrize("name", sorted(SEMANTIC))
def test_refused_by_the_parser_only_where_a_schema_cannot_say(
    name: str, validator: jsonschema.protocols.Validator, parser: NativeAuthorizer
) -> None:
    with pytest.raises(InvalidAuthorization):
        parse(parser, SEMANTIC[name])
    validator.validate(SEMANTIC[name])
