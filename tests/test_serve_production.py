"""`terminal-proxy serve` as a real process: TLS with reload on SIGHUP, the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml

from tests.conftest import ENV_PATH, Kube
from tests.fakes.auth_api import FakeAuthApi
from tests.support.process import GatewayProcess
from tests.support.termclient import Term, open_term


def write_config(
    tmp_path: Path, auth_api: FakeAuthApi, kube: Kube, secret: bytes, **sections: Any
) -> Path:
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(secret).decode() + "\n")
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "authorization": {"backend": auth_api.url, "secret_file": str(secret_file)},
        "upstream": {"allowed_hosts": [kube.host_port]},
        "session": {"shutdown_grace": "0s", "close_timeout": "2s"},
        "logging": {"level": "debug", "format": "json"},
    }
    for name, value in sections.items():
        config[name] = {**config.get(name, {}), **value}
    path = tmp_path / "terminal-proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def echo(term: Term, word: str) -> None:
    await term.send_stdin(f"echo {word}\r".encode())
    await term.read_until(f"\r\n{word}\r\n".encode())


# --------------------------------------------------------------------------------------------
# TLS


def install_cert(ca: trustme.CA, cert: Path, key: Path, name: str) -> bytes:
    """Issue a 127.0.0.1 certificate called ``name`` into the files; return its DER."""
    leaf = ca.issue_cert("127.0.0.1", common_name=name)
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def served_cert(port: int, client_ssl: ssl.SSLContext) -> bytes:
    """The certificate a new TLS connection to the gateway is given (DER)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_tls_listener_reloads_certificate_on_sighup(
    tmp_path: Path, auth_api: FakeAuthApi, kube: Kube, secret: bytes
) -> None:
    """wss works; after the files are replaced and SIGHUP sent, new connections get the new
    certificate while the open terminal goes on; a broken pair keeps the previous one."""
    ca = trustme.CA()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first = install_cert(ca, cert, key, "first")
    config = write_config(
        tmp_path, auth_api, kube, secret, tls={"cert_file": str(cert), "key_file": str(key)}
    )
    client_ssl = ssl.create_default_context()
    ca.configure_trust(client_ssl)
    async with (
        GatewayProcess(["serve", "--config", str(config)]) as gateway,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as browser,
    ):
        assert gateway.url.startswith("https://")
        port = int(gateway.url.rsplit(":", 1)[1])
        url = gateway.url.replace("https://", "wss://") + ENV_PATH
        term = await open_term(browser, url, "terminal.gitlab.com")
        await echo(term, "over-wss")
        assert await served_cert(port, client_ssl) == first

        second = install_cert(ca, cert, key, "second")
        gateway.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await gateway.wait_for_line(lambda line: "TLS certificate reloaded" in line)
        assert await served_cert(port, client_ssl) == second
        await echo(term, "still-open")

        key.write_text("not a key\n")
        gateway.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await gateway.wait_for_line(lambda line: "TLS certificate not reloaded" in line)
        assert await served_cert(port, client_ssl) == second
        another = await open_term(browser, url, "terminal.gitlab.com")
        await echo(another, "after-bad-reload")
        await term.ws.close()
        await another.ws.close()
        assert await gateway.stop(signal.SIGTERM) == 0


async def test_serve_refuses_unloadable_certificate(
    tmp_path: Path, auth_api: FakeAuthApi, kube: Kube, secret: bytes
) -> None:
    """A certificate that cannot be loaded stops serve at start with exit 2 and the key."""
    cert = tmp_path / "tls.crt"
    cert.write_text("garbage\n")
    config = write_config(
        tmp_path,
        auth_api,
        kube,
        secret,
        tls={"cert_file": str(cert), "key_file": str(tmp_path / "none.key")},
    )
    from tests.support.process import run_cli

    code, _, err = await run_cli("serve", "--config", str(config))
    assert code == 2 and "tls.cert_file: cannot load the certificate" in err


# --------------------------------------------------------------------------------------------
# The drain


def metrics_url(gateway: GatewayProcess) -> str:
    for line in gateway.lines:
        match = re.search(r"metrics listening on (http://[0-9.:]+)/metrics", line)
        if match:
            return match.group(1)
    raise AssertionError(f"no metrics line in {gateway.lines}")


async def test_drain_keeps_sessions_until_they_end_then_exits_0(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """SIGTERM: the listener stops accepting, readiness turns 503 (on the metrics port),
    live terminals keep working within the drain period, and once the last one ends the
    process exits 0 without waiting out the period."""
    config = write_config(
        tmp_path,
        auth_api,
        kube,
        secret,
        session={"shutdown_grace": "60s"},
        metrics={"listen": "127.0.0.1:0"},
    )
    async with GatewayProcess(["serve", "--config", str(config)]) as gateway:
        await gateway.wait_for_line(lambda line: "metrics listening on" in line)
        probes = metrics_url(gateway)
        term = await open_term(browser, gateway.url + ENV_PATH, "terminal.gitlab.com")
        await echo(term, "before-term")
        async with browser.get(probes + "/-/readiness") as resp:
            assert resp.status == 200
        gateway.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        await gateway.wait_for_line(lambda line: "draining 1 sessions" in line)
        async with browser.get(probes + "/-/readiness") as resp:
            assert resp.status == 503 and (await resp.text()) == "draining\n"
        async with browser.get(probes + "/metrics") as resp:
            assert "terminal_proxy_draining 1.0" in await resp.text()
        with pytest.raises(aiohttp.ClientConnectorError):
            await open_term(browser, gateway.url + ENV_PATH, "terminal.gitlab.com")
        await echo(term, "while-draining")
        await term.ws.close()
        async with asyncio.timeout(15):  # far below the 60s drain period
            assert await gateway.proc.wait() == 0  # type: ignore[union-attr]


async def test_drain_period_ends_with_1001(
    tmp_path: Path,
    auth_api: FakeAuthApi,
    kube: Kube,
    secret: bytes,
    browser: aiohttp.ClientSession,
) -> None:
    """A terminal still open when session.shutdown_grace runs out is closed with 1001."""
    config = write_config(tmp_path, auth_api, kube, secret, session={"shutdown_grace": "1s"})
    async with GatewayProcess(["serve", "--config", str(config)]) as gateway:
        term = await open_term(browser, gateway.url + ENV_PATH, "terminal.gitlab.com")
        await echo(term, "before-term")
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        gateway.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        await gateway.wait_for_line(lambda line: "draining 1 sessions" in line)
        await echo(term, "in-grace")
        assert await term.wait_closed() == (1001, "server shutting down")
        assert loop.time() - signalled >= 0.9
        async with asyncio.timeout(15):
            assert await gateway.proc.wait() == 0  # type: ignore[union-attr]
