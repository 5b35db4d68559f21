"""`terminal-proxy` as a real process: serve, SIGTERM, check-config, flags."""

from __future__ import annotations

import asyncio
import base64
import gc
import random
import signal
import weakref
from pathlib import Path

import aiohttp
import pytest
import yaml

from terminal_proxy.cli import settle_heap
from tests.conftest import ENV_PATH, Kube, gitlab_channel, wait_for_stdin_end
from tests.fakes.auth_api import FakeAuthApi
from tests.support.process import GatewayProcess, run_cli
from tests.support.termclient import open_term


def _write_config(tmp_path: Path, auth_api: FakeAuthApi, kube: Kube, secret: bytes) -> Path:
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(secret).decode() + "\n")
    config = {
        "listen": "127.0.0.1:0",
        "authorization": {"backend": auth_api.url, "secret_file": str(secret_file)},
        "upstream": {"allowed_hosts": [kube.host_port]},
        "session": {"shutdown_grace": "0s", "close_timeout": "2s"},
        "logging": {"level": "debug", "format": "json"},
    }
    path = tmp_path / "terminal-proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_serve_end_to_end_and_sigterm(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """A served terminal works; SIGTERM closes sessions with 1001 and exits 0."""
    config = _write_config(tmp_path, auth_api, kube, secret)
    async with GatewayProcess(["serve", "--config", str(config)]) as gateway:
        terms = [
            await open_term(browser, gateway.url + ENV_PATH, "terminal.gitlab.com")
            for _ in range(2)
        ]
        sessions = [await kube.next_session() for _ in terms]
        for term in terms:
            await term.send_stdin(b"echo over-process\r")
            await term.read_until(b"\r\nover-process\r\n")
        code = await gateway.stop(signal.SIGTERM)
        assert code == 0
        for term in terms:
            assert await term.wait_closed() == (1001, "server shutting down")
        for session in sessions:
            await wait_for_stdin_end(session)
            await session.wait_closed()
            assert session.client_close_code == 1001
        ended = [line for line in gateway.lines if '"session ended"' in line]
        assert len(ended) == 2 and all('"stop": "shutdown"' in line for line in ended)


async def test_serve_with_flags_only(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """--listen, --auth-backend, --secret-file and --allow-upstream need no file."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(secret).decode())
    args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--auth-backend",
        auth_api.url,
        "--secret-file",
        str(secret_file),
        "--allow-upstream",
        kube.host_port,
    ]
    async with GatewayProcess(args) as gateway:
        term = await open_term(browser, gateway.url + ENV_PATH, "v5.channel.k8s.io")
        await term.send_stdin(b"echo flags\r")
        await term.read_until(b"\r\nflags\r\n")
        await term.ws.close()
        await gateway.wait_for_line(lambda line: "session ended" in line)
        assert await gateway.stop(signal.SIGINT) == 0


async def test_serve_refuses_bad_config(tmp_path: Path) -> None:
    """A serve with a broken file exits 2 printing file:line: key: problem."""
    path = tmp_path / "bad.yaml"
    path.write_text("listen: 127.0.0.1:0\nupstream:\n  dial_timeout: 10 parsecs\n")
    code, _, err = await run_cli("serve", "--config", str(path))
    assert code == 2
    assert f"{path}:3: upstream.dial_timeout:" in err


async def test_check_config_reports_every_problem_with_lines(tmp_path: Path) -> None:
    """check-config prints each problem with file, line and key, and exits 1."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listen: 127.0.0.1:8181\n"
        "authorization:\n"
        "  backend: http://rails:8080\n"
        "  secret_env: NOT_SET_ANYWHERE_12345\n"
        "  timout: 5s\n"
        "browser:\n"
        "  max_message_size: lots\n"
    )
    code, _, err = await run_cli("check-config", str(path))
    assert code == 1
    assert f"{path}:5: authorization.timout:" in err
    assert f"{path}:7: browser.max_message_size:" in err
    assert "NOT_SET_ANYWHERE_12345" in err  # names the variable, never a value


async def test_check_config_accepts_the_examples() -> None:
    """The shipped example config validates."""
    root = Path(__file__).resolve().parent.parent
    code, out, err = await run_cli("check-config", str(root / "config/terminal-proxy.example.yaml"))
    assert code == 0, err
    assert out.strip().endswith(": ok")


async def test_slow_browser_keeps_gateway_memory_bounded(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """A browser reading 100 KB/s under an upstream flood: bounded RSS, nothing lost."""
    auth_api.channel = gitlab_channel(
        kube, command=["blob", str(500 << 20), "11", "16384"], tty=False
    )
    config = _write_config(tmp_path, auth_api, kube, secret)
    async with GatewayProcess(["serve", "--config", str(config)]) as gateway:
        ws = await browser.ws_connect(
            gateway.url + ENV_PATH, protocols=["terminal.gitlab.com"], max_msg_size=0
        )
        received = bytearray()
        first = await ws.receive()
        received.extend(first.data)
        baseline = gateway.rss_bytes()
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Read at ~100 KB/s for 3 s: the pace is the point of the test, not a sync.
        while loop.time() - started < 3:
            msg = await ws.receive()
            received.extend(msg.data)
            await asyncio.sleep(len(msg.data) / 100_000)
        grown = gateway.rss_bytes() - baseline
        await ws.close()
    expected = random.Random(11).randbytes(len(received))
    assert bytes(received) == expected
    assert 200_000 < len(received) < 2_000_000
    assert grown < 16 << 20, f"gateway RSS grew by {grown} bytes"


async def test_two_workers_share_the_port(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """--workers 2 serves terminals from two processes on one port; SIGTERM stops both."""
    config = _write_config(tmp_path, auth_api, kube, secret)
    async with GatewayProcess(["serve", "--config", str(config), "--workers", "2"]) as gateway:
        await gateway.wait_for_line(lambda line: "started 2 workers" in line)
        # Both workers listen (the first one's line opened the context).
        await gateway.wait_for_line(
            lambda _: sum("listening on" in line for line in gateway.lines) >= 2
        )
        terms = [
            await open_term(browser, gateway.url + ENV_PATH, "terminal.gitlab.com")
            for _ in range(6)
        ]
        for i, term in enumerate(terms):
            await term.send_stdin(f"echo worker-{i}\r".encode())
            await term.read_until(f"\r\nworker-{i}\r\n".encode())
        assert await gateway.stop(signal.SIGTERM) == 0
        for term in terms:
            assert await term.wait_closed() == (1001, "server shutting down")


@pytest.mark.parametrize(("choice", "loop_module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_event_loop_choice(choice: str, loop_module: str) -> None:
    """--event-loop picks the loop the gateway runs on (auto means uvloop when installed)."""
    from terminal_proxy.cli import run_loop

    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    run_loop(main(), choice)
    assert seen == [loop_module]


def test_start_up_objects_are_frozen_out_of_collections() -> None:
    """``serve`` freezes what start-up built, so full collections walk only sessions."""
    probe = weakref.ref(_Probe())  # a cycle start-up left behind: collected, not frozen
    kept = _Probe()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert probe() is None
        assert not any(o is kept for o in gc.get_objects())  # frozen: no generation holds it
    finally:
        gc.unfreeze()


class _Probe:
    def __init__(self) -> None:
        self.me = self
