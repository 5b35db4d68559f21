"""Several replicas behind real nginx and HAProxy: a resume lands on the replica holding it.

Two real ``terminal-proxy serve`` processes, replica ids ``a`` (``session.replica_id`` in
the file) and ``b`` (``--replica-id``), behind the shipped ``config/nginx.conf`` and
``config/haproxy.cfg`` with only their addresses swapped (tests/support/proxies.py). Terminals are
opened through the proxy (balanced over both), dropped (``transport.abort()``: no close
frame) and resumed through the proxy with ``?resume=<replica>.<random>``: each resume must
find its own upstream exec session again. A resume reaching the other replica gets 404,
and a crashed replica takes its sessions with it (docs/operations.md, several replicas).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from terminal_proxy.app import new_request_id
from terminal_proxy.config import ConfigError, default_config, load_config
from terminal_proxy.protocols import TERMINAL_PROXY
from tests.conftest import ENV_PATH, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.fakes.kube_apiserver import ExecSession
from tests.support.process import GatewayProcess, run_cli
from tests.support.proxies import HAProxy, Nginx, ProxyProcess
from tests.support.termclient import Term, open_term, resume_refusal, resume_term, wait_hello

KINDS = ["nginx", "haproxy"]
SESSIONS = 6
NO_SUCH_SESSION = (404, "no such session to resume")


def drop(term: Term) -> None:
    """Kill the client's TCP connection: no close frame, nothing flushed."""
    connection = term.ws._conn
    assert connection is not None and connection.transport is not None
    connection.transport.abort()


def _config(
    tmp_path: Path, auth_api: FakeAuthApi, kube: Kube, secret: bytes, **session: Any
) -> Path:
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(secret).decode() + "\n")
    config = {
        "listen": "127.0.0.1:0",
        "authorization": {"backend": auth_api.url, "secret_file": str(secret_file)},
        "upstream": {"allowed_hosts": [kube.host_port]},
        "session": {"shutdown_grace": "0s", "close_timeout": "2s", **session},
        "logging": {"level": "info", "format": "json"},
    }
    path = tmp_path / f"terminal-proxy-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def replicas(
    tmp_path: Path, auth_api: FakeAuthApi, kube: Kube, secret: bytes
) -> AsyncIterator[dict[str, GatewayProcess]]:
    """Replica ``a`` named by its file, replica ``b`` by ``--replica-id``."""
    with_id = _config(tmp_path, auth_api, kube, secret, replica_id="a")
    without = _config(tmp_path, auth_api, kube, secret)
    async with (
        GatewayProcess(["serve", "--config", str(with_id)]) as a,
        GatewayProcess(["serve", "--config", str(without), "--replica-id", "b"]) as b,
    ):
        yield {"a": a, "b": b}


def proxy(kind: str, tmp_path: Path, gateways: dict[str, GatewayProcess]) -> ProxyProcess:
    addresses = {name: g.url.removeprefix("http://") for name, g in gateways.items()}
    cls = Nginx if kind == "nginx" else HAProxy
    return cls(tmp_path / kind, addresses)


async def logged(gateway: GatewayProcess, message: str, session: str) -> dict[str, Any]:
    """Wait for the gateway's JSON log line ``message`` about ``session``."""

    def match(line: str) -> bool:
        return message in line and session in line

    line = await gateway.wait_for_line(match)
    doc: dict[str, Any] = json.loads(line)
    return doc


@dataclasses.dataclass
class Opened:
    term: Term
    upstream: ExecSession
    session: str

    @property
    def replica(self) -> str:
        return self.session.partition(".")[0]


async def open_sessions(browser: aiohttp.ClientSession, url: str, kube: Kube) -> list[Opened]:
    opened = []
    for i in range(SESSIONS):
        term = await open_term(browser, url, TERMINAL_PROXY)
        hello = await wait_hello(term)
        upstream = await kube.next_session()
        await term.send_stdin(f"echo before-{i}\r".encode())
        await term.read_until(f"\r\nbefore-{i}\r\n".encode())
        opened.append(Opened(term, upstream, hello.session))
    return opened


def with_session(term: Term, session: str) -> Term:
    """A copy of ``term`` whose hello names ``session`` (a browser resuming the wrong id)."""
    assert term.hello is not None
    ghost = Term(term.ws, TERMINAL_PROXY, stdout=bytearray(term.stdout), offset=term.offset)
    ghost.sent_input = bytearray(term.sent_input)
    ghost.hello = dataclasses.replace(term.hello, session=session)
    return ghost


@pytest.mark.proxies
@pytest.mark.parametrize("kind", KINDS)
async def test_resume_through_the_proxy_lands_on_the_replica_holding_the_session(
    kind: str,
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """Six terminals balanced over replicas a and b, all dropped; each resumes through
    the proxy on its own replica and finds its own upstream; the same resume sent to the
    other replica (tag swapped, or straight to it) gets 404 before the upgrade."""
    async with (
        replicas(tmp_path, auth_api, kube, secret) as gateways,
        proxy(kind, tmp_path, gateways) as front,
    ):
        url = front.url + ENV_PATH
        opened = await open_sessions(browser, url, kube)
        assert {o.replica for o in opened} == {"a", "b"}, [o.session for o in opened]
        for o in opened:
            random = o.session.partition(".")[2]
            assert len(random) == 16 and int(random, 16) >= 0  # 64 random bits
            drop(o.term)
        for o in opened:
            # The replica named in the id holds the session, and saw its browser go.
            await logged(gateways[o.replica], "browser detached", o.session)

        # A replica the proxy does not know: balanced like a new terminal, and refused.
        unknown = f"zz.{opened[0].session.partition('.')[2]}"
        stray = await resume_refusal(browser, url, with_session(opened[0].term, unknown))
        assert stray == NO_SUCH_SESSION

        for i, o in enumerate(opened):
            other = "b" if o.replica == "a" else "a"
            swapped = f"{other}.{o.session.partition('.')[2]}"
            wrong = await resume_refusal(browser, url, with_session(o.term, swapped))
            assert wrong == NO_SUCH_SESSION
            direct = await resume_refusal(browser, gateways[other].url + ENV_PATH, o.term)
            assert direct == NO_SUCH_SESSION
            warning = await logged(gateways[other], "reached replica", o.session)
            assert warning["level"] == "warning"

            resumed = await resume_term(browser, url, o.term)
            assert resumed.hello is not None and resumed.hello.resumed
            assert resumed.hello.session == o.session
            await logged(gateways[o.replica], "session resumed", o.session)
            await resumed.send_stdin(f"echo after-{i}\r".encode())
            await resumed.read_until(f"\r\nafter-{i}\r\n".encode())
            # The same shell: the upstream exec session that got the first line gets this.
            await o.upstream.wait_for_stdin(f"echo before-{i}\recho after-{i}\r".encode())
            assert bytes(resumed.stdout).startswith(f"$ echo before-{i}\r\n".encode())
            await resumed.ws.close()
            await o.upstream.wait_closed()


@pytest.mark.proxies
@pytest.mark.parametrize("kind", KINDS)
async def test_a_crashed_replica_takes_its_sessions_with_it(
    kind: str,
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """SIGKILL replica a: its upstream exec connections drop (the kube-apiserver ends the
    processes), its attached and detached sessions are gone, and a resume through the
    proxy gets 404 from b at once; b's sessions resume as before."""
    async with AsyncExitStack() as stack:
        gateways = await stack.enter_async_context(replicas(tmp_path, auth_api, kube, secret))
        front = await stack.enter_async_context(proxy(kind, tmp_path, gateways))
        url = front.url + ENV_PATH
        opened = await open_sessions(browser, url, kube)
        on_a = [o for o in opened if o.replica == "a"]
        on_b = [o for o in opened if o.replica == "b"]
        assert len(on_a) >= 2 and on_b, [o.session for o in opened]
        detached, attached = on_a[0], on_a[1]
        drop(detached.term)
        await logged(gateways["a"], "browser detached", detached.session)

        assert await gateways["a"].stop(signal.SIGKILL) == -signal.SIGKILL
        for o in on_a:
            await o.upstream.wait_closed()
        code, _ = await attached.term.wait_closed()
        assert code in (1006, None), code
        for o in (detached, attached):
            assert await resume_refusal(browser, url, o.term) == NO_SUCH_SESSION

        survivor = on_b[0]
        drop(survivor.term)
        resumed = await resume_term(browser, url, survivor.term)
        assert resumed.hello is not None and resumed.hello.session == survivor.session
        await resumed.send_stdin(b"echo still-here\r")
        await resumed.read_until(b"\r\nstill-here\r\n")
        await resumed.ws.close()


# The setting itself -------------------------------------------------------------------


def test_session_ids_carry_the_replica_id() -> None:
    assert len(new_request_id()) == 16 and "." not in new_request_id()
    replica, dot, random = new_request_id("terminal-proxy-7d9f8b6c5d-x2x7k").partition(".")
    assert (replica, dot, len(random)) == ("terminal-proxy-7d9f8b6c5d-x2x7k", ".", 16)
    assert new_request_id("a") != new_request_id("a")


@pytest.mark.parametrize("bad", ["A", "a.b", "a_b", "x" * 64, "ä", "7 "])
def test_replica_id_is_checked(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"<string>:2: session.replica_id: invalid replica id"):
        load_config(f"session:\n  replica_id: {json.dumps(bad)}\n")
    with pytest.raises(ConfigError, match=r"--replica-id: invalid replica id"):
        default_config().with_overrides(replica_id=bad)


def test_replica_id_defaults_to_none_and_is_read() -> None:
    assert default_config().session.replica_id == ""
    assert load_config("session:\n  replica_id: a-1\n").session.replica_id == "a-1"
    assert load_config("session:\n  replica_id: null\n").session.replica_id == ""
    assert load_config('session:\n  replica_id: ""\n').session.replica_id == ""
    config = load_config("session:\n  replica_id: a\n").with_overrides(replica_id="b")
    assert config.session.replica_id == "b"


async def test_replica_id_from_the_environment(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """$TERMINAL_PROXY_REPLICA_ID (the pod name, through the downward API) names the
    replica when --replica-id is not given; a bad one stops serve with exit 2."""
    config = _config(tmp_path, auth_api, kube, secret, replica_id="from-file")
    env = {"TERMINAL_PROXY_REPLICA_ID": "terminal-proxy-5d8c7f9b4-abcde"}
    async with GatewayProcess(["serve", "--config", str(config)], env=env) as gateway:
        term = await open_term(browser, gateway.url + ENV_PATH, TERMINAL_PROXY)
        hello = await wait_hello(term)
        assert hello.session.startswith("terminal-proxy-5d8c7f9b4-abcde.")
        await term.ws.close()
    code, _, err = await run_cli("serve", "--config", str(config), "--replica-id", "Pod.1")
    assert code == 2 and "--replica-id: invalid replica id 'Pod.1'" in err
