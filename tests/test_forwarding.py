"""Resumes that reach the wrong replica are forwarded to the one holding the session.

Three real ``terminal-proxy serve`` processes, replicas ``a``, ``b`` and ``c``, each with
an internal listener and the others as ``cluster.peers`` (docs/cluster.md, "Forwarding
between replicas"). A browser's resume sent to any replica is served by the holder:
exact replay, the same shell, its input on; the holder's refusals reach the browser as
the holder gave them; the internal listener serves only requests signed by a replica.
Behind the shipped nginx and HAProxy configs, the replicas are deliberately mis-named
(each proxy's server "a" is replica b, "b" is replica c), so prefix routing sends every
resume to the wrong replica, as a load balancer without stickiness would.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from terminal_proxy.cluster.signing import HEADER, sign
from terminal_proxy.config import (
    ConfigError,
    default_config,
    load_config,
    validate_for_serving,
)
from terminal_proxy.protocols import TERMINAL_PROXY
from tests.conftest import ENV_PATH, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.fakes.kube_apiserver import ExecSession
from tests.support.process import GatewayProcess
from tests.support.proxies import HAProxy, Nginx, ProxyProcess, free_port
from tests.support.termclient import (
    Term,
    drop,
    open_term,
    raw_handshake,
    resume_term,
    wait_hello,
)

REPLICAS = ("a", "b", "c")
NO_SUCH_SESSION = (404, "no such session to resume")


class Cluster:
    def __init__(self, gateways: dict[str, GatewayProcess], internal: dict[str, str]) -> None:
        self.gateways = gateways
        self.internal = internal

    def url(self, replica: str) -> str:
        return self.gateways[replica].url + ENV_PATH


@asynccontextmanager
async def cluster(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    *,
    dead: str = "",
) -> AsyncIterator[Cluster]:
    """Replicas a, b, c with static peers; ``dead`` names a peer with nothing behind it."""
    auth_secret = tmp_path / "auth-secret"
    auth_secret.write_text(base64.b64encode(secret).decode() + "\n")
    cluster_secret = tmp_path / "cluster-secret"
    cluster_secret.write_text(base64.b64encode(b"c" * 32).decode() + "\n")
    internal = {name: f"http://127.0.0.1:{free_port()}" for name in (*REPLICAS, dead) if name}
    async with AsyncExitStack() as stack:
        gateways = {}
        for name in REPLICAS:
            config = {
                "listen": "127.0.0.1:0",
                "authorization": {"backend": auth_api.url, "secret_file": str(auth_secret)},
                "upstream": {"allowed_hosts": [kube.host_port]},
                "session": {"shutdown_grace": "0s", "close_timeout": "2s", "replica_id": name},
                "logging": {"level": "info", "format": "json"},
                "cluster": {
                    "internal_listen": internal[name].removeprefix("http://"),
                    "peers": internal,
                    "secret_file": str(cluster_secret),
                },
            }
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            gateways[name] = await stack.enter_async_context(
                GatewayProcess(["serve", "--config", str(path)])
            )
        yield Cluster(gateways, internal)


async def open_on(browser: aiohttp.ClientSession, url: str, kube: Kube) -> tuple[Term, ExecSession]:
    term = await open_term(browser, url, TERMINAL_PROXY)
    await wait_hello(term)
    upstream = await kube.next_session()
    await term.send_stdin(b"echo before\r")
    await term.read_until(b"\r\nbefore\r\n$ ")  # the fake shell's prompt too
    return term, upstream


async def logged(gateway: GatewayProcess, message: str, session: str) -> dict[str, Any]:
    line = await gateway.wait_for_line(lambda s: message in s and session in s)
    doc: dict[str, Any] = json.loads(line)
    return doc


def holder(term: Term) -> str:
    assert term.hello is not None
    return term.hello.session.partition(".")[0]


async def test_a_resume_reaching_another_replica_gets_the_exact_replay(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """Opened on a, dropped, output produced while away; resumed on b: the replay is
    exactly the missed bytes, the shell is the same, and then on c again."""
    async with cluster(tmp_path, auth_api, kube, secret) as c:
        term, upstream = await open_on(browser, c.url("a"), kube)
        assert holder(term) == "a"
        drop(term)
        assert term.hello is not None
        await logged(c.gateways["a"], "browser detached", term.hello.session)
        missed = bytes(range(256)) * 64
        await upstream.send(1, missed)
        resumed = await resume_term(
            browser, c.url("b"), term, headers={"X-Forwarded-For": "203.0.113.9"}
        )
        assert resumed.hello is not None and resumed.hello.resumed, resumed.close_reason
        assert resumed.hello.offset == term.offset
        await resumed.read_until(missed[-64:])
        assert bytes(resumed.stdout[len(term.stdout) :]) == missed
        # The holder resumed it and saw the browser's address, not replica b's.
        line = await logged(c.gateways["a"], "session resumed", term.hello.session)
        assert line.get("client") == "203.0.113.9", line
        await logged(c.gateways["b"], "forwarded to replica a", "")
        await resumed.send_stdin(b"echo after\r")
        await resumed.read_until(b"\r\nafter\r\n")
        await upstream.wait_for_stdin(b"echo before\recho after\r")

        # Detach again (1001, a page unloading: passed through, so the holder detaches).
        await resumed.ws.close(code=1001)
        await logged(c.gateways["a"], "browser detached", term.hello.session)
        again = await resume_term(browser, c.url("c"), resumed)
        assert again.hello is not None and again.hello.resumed
        await again.send_stdin(b"echo third\r")
        await again.read_until(b"\r\nthird\r\n")
        # (Below, the holder ends the session; see the next test for a holder that dies.)
        # The process exits: its last output and the exit code reach the browser through
        # the forwarding, then the holder's close code and reason.
        await upstream.send(1, b"last words\r\n")
        await upstream.finish(3)
        await again.read_until(b"last words\r\n")
        code, reason = await again.wait_closed()
        assert (code, reason) == (1000, "exit code 3")


async def test_refusals_pass_through_as_the_holder_gave_them(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    async with cluster(tmp_path, auth_api, kube, secret) as c:
        term, _ = await open_on(browser, c.url("a"), kube)
        drop(term)
        assert term.hello is not None
        session = term.hello.session
        await logged(c.gateways["a"], "browser detached", session)
        # An id the holder does not have: its 404, body and all.
        ghost = f"a.{'0' * 16}"
        status, body, headers = await raw_handshake(
            browser, f"{c.url('b')}?resume={ghost}", protocols=TERMINAL_PROXY
        )
        assert status == 404 and body.startswith("no such session to resume\n"), body
        assert headers["X-Request-Id"].startswith("a."), headers
        # A replica nobody knows: 404 from the receiving replica.
        status, body, _ = await raw_handshake(
            browser, f"{c.url('b')}?resume=zz.{'0' * 16}", protocols=TERMINAL_PROXY
        )
        assert (status, body.partition("\n")[0]) == NO_SUCH_SESSION
        # The authorization API refuses the resume: its own status, body and headers.
        auth_api.set_mode("deny")
        status, body, headers = await raw_handshake(
            browser, f"{c.url('c')}?resume={session}", protocols=TERMINAL_PROXY
        )
        assert (status, body) == (403, "You are not allowed to open this terminal")
        assert headers["X-Custom"] == "kept"
        auth_api.set_mode("ok")
        # A join is forwarded the same way: the holder's answer (GitLab-contract routes
        # refuse joins) rather than this replica's 404.
        status, body, _ = await raw_handshake(
            browser, f"{c.url('b')}?join={session}", protocols=TERMINAL_PROXY
        )
        assert (status, body) == (403, "joining is not supported on GitLab-contract routes\n")
        # A wrong token: the holder's 4009 close, code and reason, after the upgrade.
        refused = await resume_term(browser, c.url("b"), term, token="A" * 43)
        assert await refused.wait_closed() == (4009, "resume refused: invalid token")
        # The token is still good: the session resumes.
        resumed = await resume_term(browser, c.url("c"), term)
        assert resumed.hello is not None and resumed.hello.resumed
        await resumed.ws.close()


async def test_the_internal_listener_serves_only_replicas(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """Unsigned, badly signed and replayed requests get 403 (logged, counted); a signed
    one is served like a browser's."""
    async with cluster(tmp_path, auth_api, kube, secret) as c:
        target = f"{ENV_PATH}?resume=a.{'0' * 16}"
        url = c.internal["a"] + target
        status, body, _ = await raw_handshake(browser, url, protocols=TERMINAL_PROXY)
        assert (status, body) == (403, "not a replica of this cluster\n")
        forged = sign(b"x" * 32, "b", "GET", target, time.time())
        status, _, _ = await raw_handshake(
            browser, url, protocols=TERMINAL_PROXY, headers={HEADER: forged}
        )
        assert status == 403
        good = sign(b"c" * 32, "b", "GET", target, time.time())
        status, body, _ = await raw_handshake(
            browser, url, protocols=TERMINAL_PROXY, headers={HEADER: good}
        )
        assert (status, body.partition("\n")[0]) == NO_SUCH_SESSION
        status, _, _ = await raw_handshake(
            browser, url, protocols=TERMINAL_PROXY, headers={HEADER: good}
        )
        assert status == 403
        await c.gateways["a"].wait_for_line(lambda s: "replayed nonce" in s)
        await c.gateways["a"].wait_for_line(lambda s: "bad signature" in s)
        # A new terminal on the internal listener is not forwarded anywhere either: it is
        # the holder's own handshake (signed), so it opens here.
        new_target = ENV_PATH
        signed = sign(b"c" * 32, "b", "GET", new_target, time.time())
        term = await open_term(
            browser, c.internal["a"] + new_target, TERMINAL_PROXY, headers={HEADER: signed}
        )
        hello = await wait_hello(term)
        assert hello.session.startswith("a.")
        await term.ws.close()


async def test_a_dead_holder_is_named(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    async with cluster(tmp_path, auth_api, kube, secret, dead="d") as c:
        status, body, _ = await raw_handshake(
            browser, f"{c.url('a')}?resume=d.{'0' * 16}", protocols=TERMINAL_PROXY
        )
        assert (status, body.partition("\n")[0]) == (502, "replica d unreachable")
        line = await c.gateways["a"].wait_for_line(lambda s: "replica d at" in s)
        assert json.loads(line)["level"] == "warning"


async def test_a_large_output_passes_through_without_loss(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    async with cluster(tmp_path, auth_api, kube, secret) as c:
        term, upstream = await open_on(browser, c.url("a"), kube)
        drop(term)
        assert term.hello is not None
        await logged(c.gateways["a"], "browser detached", term.hello.session)
        resumed = await resume_term(browser, c.url("b"), term)
        assert resumed.hello is not None and resumed.hello.resumed
        chunk = b"0123456789abcdef" * 4096  # 64 KiB
        before = len(resumed.stdout)
        for _ in range(64):  # 4 MiB
            await upstream.send(1, chunk)
        await upstream.send(1, b"THE-END")
        await resumed.read_until(b"THE-END")
        got = bytes(resumed.stdout[before:])
        assert got == chunk * 64 + b"THE-END"
        # The browser's 1000 reaches the holder: the session ends, the upstream with it.
        await resumed.ws.close()
        await upstream.wait_closed()


def _proxy(kind: str, tmp_path: Path, c: Cluster) -> ProxyProcess:
    # The examples' server "a" is replica b and "b" is replica c: prefix routing sends
    # every b.* resume to c, and c.* (no such server) resumes are balanced.
    addresses = {
        "a": c.gateways["b"].url.removeprefix("http://"),
        "b": c.gateways["c"].url.removeprefix("http://"),
    }
    cls = Nginx if kind == "nginx" else HAProxy
    return cls(tmp_path / kind, addresses)


@pytest.mark.proxies
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
async def test_behind_a_proxy_that_routes_resumes_wrongly(
    kind: str,
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    async with (
        cluster(tmp_path, auth_api, kube, secret) as c,
        _proxy(kind, tmp_path, c) as front,
    ):
        url = front.url + ENV_PATH
        opened = [await open_on(browser, url, kube) for _ in range(4)]
        for i, (term, upstream) in enumerate(opened):
            drop(term)
            assert term.hello is not None
            await logged(c.gateways[holder(term)], "browser detached", term.hello.session)
            await upstream.send(1, f"while-away-{i}\r\n".encode())
            resumed = await resume_term(browser, url, term)
            assert resumed.hello is not None and resumed.hello.resumed, resumed.close_reason
            await resumed.read_until(f"while-away-{i}\r\n".encode())
            await resumed.send_stdin(f"echo after-{i}\r".encode())
            await resumed.read_until(f"\r\nafter-{i}\r\n".encode())
            await resumed.ws.close()
            await upstream.wait_closed()
        forwarded = [
            line for g in c.gateways.values() for line in g.lines if "forwarded to replica" in line
        ]
        assert forwarded, "no resume was forwarded: the proxy routed them all correctly"


# The settings -------------------------------------------------------------------------


def test_cluster_settings_are_read_and_checked(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(base64.b64encode(b"k" * 32).decode())
    config = load_config(
        "session:\n  replica_id: a\n"
        "cluster:\n  internal_listen: 127.0.0.1:9100\n"
        "  internal_url: http://10.0.0.5:9100\n"
        f"  secret_file: {key}\n"
        "  peers:\n    b: http://10.0.0.6:9100/\n    a: http://10.0.0.5:9100\n"
    )
    cluster = config.cluster
    assert str(cluster.internal_listen) == "127.0.0.1:9100"
    assert cluster.internal_url == "http://10.0.0.5:9100"
    assert cluster.peers == (("a", "http://10.0.0.5:9100"), ("b", "http://10.0.0.6:9100"))
    assert cluster.secret is not None and cluster.secret.reveal() == b"k" * 32
    assert cluster.forwarding
    assert not default_config().cluster.forwarding
    # The replica id may come from --replica-id (or the environment): serve checks it.
    without_id = load_config(f"cluster:\n  internal_listen: 127.0.0.1:9100\n  secret_file: {key}\n")
    problems = [str(p) for p in validate_for_serving(without_id)]
    assert any(
        "session.replica_id: is required when cluster.internal_listen" in p for p in problems
    )
    assert not any(
        "replica_id" in str(p)
        for p in validate_for_serving(without_id.with_overrides(replica_id="a"))
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "session:\n  replica_id: a\ncluster:\n  peers:\n    b: http://h:1\n",
            "cluster.secret_file: is required when internal_listen or peers is set",
        ),
        ("cluster:\n  peers:\n    B: http://h:1\n", "invalid replica id 'B'"),
        ("cluster:\n  peers:\n    b: ws://h:1\n", "must be http://HOST:PORT"),
        ("cluster:\n  peers:\n    b: http://h:1/x\n", "must not have a path"),
        ("cluster:\n  peers: [a]\n", "expected a mapping of replica ids"),
        ("cluster:\n  secret_file: /nonexistent\n", "cannot read secret file"),
    ],
)
def test_bad_cluster_settings_say_what_is_wrong(tmp_path: Path, text: str, problem: str) -> None:
    key = tmp_path / "key"
    key.write_text(base64.b64encode(b"k" * 32).decode())
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(text.format(key=key))


async def test_a_holder_that_dies_drops_the_browser_so_it_resumes(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """The link to the holder ends without a close frame (the holder died, or the network
    between replicas broke): the browser's connection is dropped the same way (1006), the
    one case the web client resumes on, rather than closed with a code that ends it."""
    async with cluster(tmp_path, auth_api, kube, secret) as c:
        term, _ = await open_on(browser, c.url("a"), kube)
        drop(term)
        assert term.hello is not None
        await logged(c.gateways["a"], "browser detached", term.hello.session)
        resumed = await resume_term(browser, c.url("b"), term)
        assert resumed.hello is not None and resumed.hello.resumed
        await c.gateways["a"].stop(signal.SIGKILL)
        code, _ = await resumed.wait_closed()
        assert code == 1006, code
