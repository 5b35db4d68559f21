"""Session recordings (docs/recording.md): asciicast v2 + metadata, caps, rotation, policy.

A scripted session through the real gateway is recorded, its events are compared with
what the browser got and typed, and the asciinema CLI (PyPI, asciicast v2) plays it back.
The ``required`` policy ends a session whose spool directory disappears mid-session.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from terminal_proxy.app import GATEWAY
from terminal_proxy.protocols import TERMINAL_PROXY
from terminal_proxy.recording import Recorder, RecordingSettings, rotate
from tests.conftest import ENV_PATH, GatewayFactory, Kube, gitlab_channel
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import drop, open_term, resume_term, wait_hello
from tests.test_production import use_native

V5 = "v5.channel.k8s.io"


def read_cast(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def asciinema() -> str:
    path = Path(sys.executable).with_name("asciinema")
    if not path.exists():
        pytest.fail("the asciinema CLI is not installed: pip install -e '.[test]'")
    return str(path)


async def test_scripted_session_is_recorded_and_plays_back(
    make_gateway: GatewayFactory,
    kube: Kube,
    browser: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    server = await make_gateway(
        recording={"routes": ["environment"], "dir": str(spool), "input": True}
    )
    term = await open_term(browser, str(server.make_url(ENV_PATH)), V5)
    session = await kube.next_session()
    (relay,) = server.app[GATEWAY].registry.live
    await term.resize(100, 30)
    await session.wait_for_resize(100, 30)
    typed = "echo grüße\rexit 0\r"
    await term.send_stdin("echo grüße\r".encode())
    await term.read_until("grüße\r\n$ ".encode())
    await term.send_stdin(b"exit 0\r")
    assert await term.wait_closed() == (1000, "exit code 0")
    await asyncio.wait_for(asyncio.shield(relay.done), 10)  # the recording is finished

    casts = list(spool.glob("*.cast"))
    assert len(casts) == 1
    header, events = read_cast(casts[0])
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    times = [event[0] for event in events]
    assert times == sorted(times)
    output = "".join(text for _, code, text in events if code == "o")
    assert output == term.stdout.decode()
    assert "".join(text for _, code, text in events if code == "i") == typed
    assert [text for _, code, text in events if code == "r"] == ["100x30"]

    meta = json.loads(casts[0].with_suffix(".json").read_text())
    assert meta["exit_code"] == 0 and meta["stop"] == "exited"
    assert meta["route"] == "environment" and meta["pod"] == "mypod"
    assert meta["bytes_out"] > 0 and meta["bytes_in"] > len(typed.encode())  # wire sizes
    assert meta["recording"] == casts[0].name and not meta["truncated"]
    assert meta["started"] <= meta["ended"]

    played = subprocess.run(
        [asciinema(), "cat", str(casts[0])], capture_output=True, check=True, timeout=60
    )
    assert played.stdout == term.stdout


async def _flood_after_spool_vanishes(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    tmp_path: Path,
    policy: str,
) -> tuple[Any, Path]:
    spool = tmp_path / "spool"
    audit = tmp_path / "audit.jsonl"
    auth_api.channel = gitlab_channel(kube, tty=False)
    server = await make_gateway(
        recording={"routes": ["environment"], "dir": str(spool), "policy": policy},
        audit={"enabled": True, "file": str(audit)},
    )
    term = await open_term(browser, str(server.make_url(ENV_PATH)), V5)
    await kube.next_session()
    await term.send_stdin(b"echo before\n")
    await term.read_until(b"before\n")
    for path in spool.iterdir():
        path.unlink()
    spool.rmdir()  # the spool is gone: the next batch cannot be written
    await term.send_stdin(b"blob 300000 5 1000; echo after\n")
    return term, audit


async def test_required_policy_ends_the_session_when_the_spool_vanishes(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    term, _ = await _flood_after_spool_vanishes(
        make_gateway, kube, auth_api, browser, tmp_path, "required"
    )
    assert await term.wait_closed() == (4011, "recording failed")


async def test_best_effort_policy_carries_on_and_audits(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    term, audit = await _flood_after_spool_vanishes(
        make_gateway, kube, auth_api, browser, tmp_path, "best_effort"
    )
    await term.read_until(b"after\n")
    await term.ws.close()
    await term.wait_closed()
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    failed = [e for e in events if e.get("event") == "recording_failed"]
    assert len(failed) == 1 and "FileNotFoundError" in failed[0]["error"]


async def test_required_policy_refuses_when_recording_cannot_start(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    server = await make_gateway(
        recording={"routes": ["environment"], "dir": str(blocker), "policy": "required"}
    )
    term = await open_term(browser, str(server.make_url(ENV_PATH)), V5)
    assert await term.wait_closed() == (4011, "recording failed")


def test_utf8_split_across_frames_is_written_whole(tmp_path: Path) -> None:
    recorder = Recorder.start(RecordingSettings(tmp_path), "s1", {})
    for piece in (b"gr\xc3", b"\xbc\xc3", b"\x9fe \xf0\x9f", b"\x98\x80"):
        recorder.output(piece)
    recorder.finish({})
    _, events = read_cast(tmp_path / "s1.cast")
    assert [e[2] for e in events] == ["gr", "ü", "ße ", "😀"]


def test_size_cap_truncates_with_a_marker(tmp_path: Path) -> None:
    recorder = Recorder.start(RecordingSettings(tmp_path, max_size=2000), "s1", {})
    for _ in range(100):
        recorder.output(b"0123456789" * 5)
    recorder.finish({})
    cast = tmp_path / "s1.cast"
    _, events = read_cast(cast)
    assert events[-1][1:] == ["m", "recording truncated (size cap)"]
    assert cast.stat().st_size <= 2000
    assert json.loads((tmp_path / "s1.json").read_text())["truncated"] is True


def test_rotation_deletes_the_oldest_finished_recordings(tmp_path: Path) -> None:
    for index in range(5):
        cast = tmp_path / f"old{index}.cast"
        cast.write_bytes(b"x" * 1000)
        cast.with_suffix(".json").write_text("{}")
        os.utime(cast, (1000 + index, 1000 + index))
    (tmp_path / "unrelated.txt").write_text("kept")
    rotate(tmp_path, 2100)
    assert sorted(p.name for p in tmp_path.glob("*.cast")) == ["old3.cast", "old4.cast"]
    assert (tmp_path / "unrelated.txt").exists()
    # Starting a recording makes room for its own cap.
    settings = RecordingSettings(tmp_path, max_size=1500, spool_quota=3000)
    Recorder.start(settings, "new", {}).finish({})
    assert sorted(p.name for p in tmp_path.glob("*.cast")) == ["new.cast", "old4.cast"]


async def test_resume_and_extension_are_marked(
    make_gateway: GatewayFactory, kube: Kube, browser: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A detach, a resume and an extension show as markers; output is whole regardless."""
    server = await make_gateway(
        recording={"routes": ["environment"], "dir": str(tmp_path)},
        session={"max_duration": "1h", "extension": "10m", "max_extensions": 1},
    )
    url = str(server.make_url(ENV_PATH))
    term = await open_term(browser, url, TERMINAL_PROXY)
    await wait_hello(term)
    await kube.next_session()
    (relay,) = server.app[GATEWAY].registry.live
    await term.send_stdin(b"echo one\r")
    await term.read_until(b"\r\none\r\n")
    drop(term)
    term = await resume_term(browser, url, term)
    assert (await term.request_extension()).granted
    await term.send_stdin(b"echo two\r")
    await term.read_until(b"\r\ntwo\r\n")
    await term.ws.close()
    await asyncio.wait_for(asyncio.shield(relay.done), 10)
    (cast,) = tmp_path.glob("*.cast")
    _, events = read_cast(cast)
    markers = [text for _, code, text in events if code == "m"]
    # (no detach marker when the resume beat the gateway to noticing the drop)
    assert [m for m in markers if not m.startswith("browser detached (")] == [
        "resumed",
        "session extended by 600s",
    ]
    assert "".join(text for _, code, text in events if code == "o") == term.stdout.decode()


async def _native_session(
    make_gateway: GatewayFactory,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    recording: dict[str, Any] | None,
    overrides: dict[str, Any],
) -> tuple[Any, Any]:
    if auth_api.contract != "native":
        use_native(auth_api, "alice")
    if recording is not None:
        original = auth_api.body

        def body() -> bytes:
            doc = json.loads(original())
            doc["recording"] = recording
            return json.dumps(doc).encode()

        auth_api.body = body  # type: ignore[method-assign]
    server = await make_gateway(authorization={"contract": "native"}, **overrides)
    term = await open_term(browser, str(server.make_url(ENV_PATH)), V5)
    (relay,) = server.app[GATEWAY].registry.live
    return term, relay


async def test_authorization_answer_turns_recording_on_and_off(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The native answer's recording.enabled wins over recording.routes either way."""
    term, relay = await _native_session(
        make_gateway,
        auth_api,
        browser,
        {"enabled": True, "input": True},
        {"recording": {"dir": str(tmp_path / "on")}},
    )
    await kube.next_session()
    await term.send_stdin(b"echo on\r")
    await term.read_until(b"\r\non\r\n")
    await term.ws.close()
    await asyncio.wait_for(asyncio.shield(relay.done), 10)
    (cast,) = (tmp_path / "on").glob("*.cast")
    _, events = read_cast(cast)
    assert "".join(text for _, code, text in events if code == "i") == "echo on\r"
    assert json.loads(cast.with_suffix(".json").read_text())["user"] == "alice"

    term, relay = await _native_session(
        make_gateway,
        auth_api,
        browser,
        {"enabled": False},
        {"recording": {"dir": str(tmp_path / "off"), "routes": ["environment"]}},
    )
    await kube.next_session()
    await term.ws.close()
    await asyncio.wait_for(asyncio.shield(relay.done), 10)
    assert list((tmp_path / "off").glob("*")) == []


async def test_required_by_the_answer_without_a_spool_ends_the_session(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    term, _ = await _native_session(
        make_gateway, auth_api, browser, {"enabled": True, "required": True}, {}
    )
    assert await term.wait_closed() == (4011, "recording failed")


async def test_malformed_recording_field_is_refused(
    make_gateway: GatewayFactory,
    kube: Kube,
    auth_api: FakeAuthApi,
    browser: aiohttp.ClientSession,
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await _native_session(make_gateway, auth_api, browser, {"enabled": "yes"}, {})
    assert refused.value.status == 502
