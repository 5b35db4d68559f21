"""100 MB of random bytes each way through the gateway: SHA-256 equal, order kept."""

from __future__ import annotations

import hashlib
import random

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import ENV_PATH, Kube, gitlab_channel
from tests.fakes.auth_api import FakeAuthApi
from tests.support.termclient import open_term

SIZE = 100 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.parametrize("browser_protocol", ["terminal.gitlab.com", "v5.channel.k8s.io"])
async def test_100mb_upstream_to_browser(
    gateway: TestServer,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
    browser_protocol: str,
) -> None:
    """The browser's SHA-256 of 100 MB of pod output equals the pod's."""
    auth_api.channel = gitlab_channel(kube, command=["blob", str(SIZE), "42", "65536"], tty=False)
    ws = await browser.ws_connect(
        str(gateway.make_url(ENV_PATH)), protocols=[browser_protocol], max_msg_size=0
    )
    digest = hashlib.sha256()
    received = 0
    skip = 0 if browser_protocol == "terminal.gitlab.com" else 1  # k8s: stream byte
    exit_frames = []
    while True:
        msg = await ws.receive()
        if msg.type is not aiohttp.WSMsgType.BINARY:
            break
        if skip and msg.data[:1] == b"\x03":
            exit_frames.append(msg.data)
            continue
        chunk = msg.data[skip:]
        digest.update(chunk)
        received += len(chunk)
    assert msg.type is aiohttp.WSMsgType.CLOSE and (msg.data, msg.extra) == (1000, "exit code 0")
    assert received == SIZE
    assert digest.hexdigest() == hashlib.sha256(random.Random(42).randbytes(SIZE)).hexdigest()


@pytest.mark.slow
async def test_100mb_browser_to_upstream(
    gateway: TestServer,
    auth_api: FakeAuthApi,
    kube: Kube,
    browser: aiohttp.ClientSession,
) -> None:
    """The pod's SHA-256 of 100 MB typed into a v5 browser equals the browser's."""
    auth_api.channel = gitlab_channel(kube, command=["sink"], tty=False)
    term = await open_term(browser, str(gateway.make_url(ENV_PATH)), "v5.channel.k8s.io")
    session = await kube.next_session()
    rng = random.Random(99)
    digest = hashlib.sha256()
    sent = 0
    while sent < SIZE:
        chunk = rng.randbytes(min(65536, SIZE - sent))
        digest.update(chunk)
        await term.send_stdin(chunk)
        sent += len(chunk)
    await term.close_stdin()
    out = await term.read_until(b"\n")
    assert out.decode().split() == [digest.hexdigest(), str(SIZE)]
    assert session.stdin_bytes == SIZE
    assert await term.wait_closed() == (1000, "exit code 0")
