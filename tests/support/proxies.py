"""Debian's nginx and HAProxy as child processes on 127.0.0.1, running the shipped examples.

``config/nginx.conf`` and ``config/haproxy.cfg`` are used as written, with only their
addresses (and, where a test says so, a timeout or a header line) replaced, so the tests
prove the examples. Both run in the foreground as our children: nginx with its own prefix,
pid file, temp paths and error log under the test's directory; HAProxy with ``-db``.
``scripts/install-proxies`` (run by ``make test``) installs them; a missing binary fails
the test, it is never skipped.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

from tests.support.logcapture import append_external_log

ROOT = Path(__file__).resolve().parents[2]
NGINX_EXAMPLE = ROOT / "config" / "nginx.conf"
HAPROXY_EXAMPLE = ROOT / "config" / "haproxy.cfg"
# The examples' replicas (session.replica_id → where it listens): each test gives every
# replica an address, or one address for all of them (a single gateway).
EXAMPLE_REPLICAS: Mapping[str, str] = {"a": "127.0.0.1:8181", "b": "127.0.0.1:8182"}

Gateways = str | Mapping[str, str]

_NGINX_MAIN = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{
    worker_connections 1024;
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/terminal-proxy.conf;
}}
"""


def binary(name: str) -> str:
    """The installed binary, or an AssertionError telling how to install it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"{name} is not installed: run scripts/install-proxies (make test does)"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replica_addresses(gateway: Gateways) -> dict[str, str]:
    """Each example replica's address in the test: ``gateway`` for all, or as mapped."""
    if isinstance(gateway, str):
        return dict.fromkeys(EXAMPLE_REPLICAS, gateway)
    assert set(gateway) == set(EXAMPLE_REPLICAS), f"the examples' replicas are {EXAMPLE_REPLICAS}"
    return dict(gateway)


def swap_addresses(text: str, gateway: Gateways) -> str:
    """Every example replica address replaced by the test's (via placeholders, so a test
    port equal to another example port cannot be swapped twice)."""
    addresses = replica_addresses(gateway)
    for name, example in EXAMPLE_REPLICAS.items():
        assert example in text, f"expected {example} in the example"
        text = text.replace(example, f"@{name}@")
    for name, address in addresses.items():
        text = text.replace(f"@{name}@", address)
    return text


def replace_once(text: str, old: str, new: str) -> str:
    """Replace ``old`` exactly once: the example must still contain what the test edits."""
    assert text.count(old) == 1, f"expected exactly one {old!r} in the example"
    return text.replace(old, new)


class ProxyProcess:
    """A reverse proxy in the foreground, with its output kept for the run's log."""

    name = "proxy"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.output = self.dir / "output.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def logs(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    async def __aenter__(self) -> ProxyProcess:
        with self.output.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
        try:
            await self._wait_listening(10.0)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _wait_listening(self, timeout: float) -> None:
        """Readiness: the port accepts connections (neither proxy announces it)."""
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"{self.name} exited: {self.logs()[-3000:]}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)  # readiness poll, bounded by the timeout
                    continue
                writer.close()
                await writer.wait_closed()
                return

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        lines = self.logs().splitlines()
        for extra in sorted(self.dir.glob("*.log")):
            if extra != self.output:
                lines += extra.read_text(errors="replace").splitlines()
        append_external_log(self.name, lines)


class Nginx(ProxyProcess):
    """``config/nginx.conf`` inside a minimal main config, with the test's edits."""

    name = "nginx"

    def __init__(
        self,
        workdir: Path,
        gateway: Gateways,
        *,
        read_timeout: str | None = None,
        pass_upgrade: bool = True,
        bind: str | None = None,
    ) -> None:
        super().__init__(workdir)
        site = NGINX_EXAMPLE.read_text()
        site = replace_once(site, "    listen 80;", f"    listen 127.0.0.1:{self.port};")
        site = swap_addresses(site, gateway)
        if read_timeout is not None:
            site = replace_once(
                site, "proxy_read_timeout 1h;", f"proxy_read_timeout {read_timeout};"
            )
            site = replace_once(
                site, "proxy_send_timeout 1h;", f"proxy_send_timeout {read_timeout};"
            )
        if not pass_upgrade:
            site = replace_once(site, "proxy_set_header Upgrade $http_upgrade;", "")
            site = replace_once(site, "proxy_set_header Connection $connection_upgrade;", "")
        if bind is not None:
            site = replace_once(
                site,
                "proxy_pass http://$terminal_proxy_upstream;",
                f"proxy_pass http://$terminal_proxy_upstream;\n        proxy_bind {bind};",
            )
        (self.dir / "terminal-proxy.conf").write_text(site)
        (self.dir / "nginx.conf").write_text(_NGINX_MAIN.format(dir=self.dir))

    def argv(self) -> list[str]:
        return [
            binary("nginx"),
            "-p",
            str(self.dir),
            "-e",
            str(self.dir / "error.log"),
            "-c",
            str(self.dir / "nginx.conf"),
        ]


class HAProxy(ProxyProcess):
    """``config/haproxy.cfg`` with the test's edits, in the foreground (``-db``)."""

    name = "haproxy"

    def __init__(
        self,
        workdir: Path,
        gateway: Gateways,
        *,
        tunnel_timeout: str | None = None,
        pass_upgrade: bool = True,
        bind: str | None = None,
    ) -> None:
        super().__init__(workdir)
        cfg = HAPROXY_EXAMPLE.read_text()
        # This machine's descriptor limit (20,000) is below 2 x the example's maxconn.
        cfg = replace_once(cfg, "    maxconn 20000\n", "    maxconn 4000\n")
        cfg = replace_once(cfg, "    bind :80\n", f"    bind 127.0.0.1:{self.port}\n")
        if bind is not None:
            for name, example in EXAMPLE_REPLICAS.items():
                line = f"server {name} {example} check"
                cfg = replace_once(cfg, line, f"{line} source {bind}")
        cfg = swap_addresses(cfg, gateway)
        if tunnel_timeout is not None:
            cfg = replace_once(cfg, "timeout tunnel 1h", f"timeout tunnel {tunnel_timeout}")
        if not pass_upgrade:
            cfg = replace_once(
                cfg,
                "# http-request del-header Upgrade if terminal",
                "http-request del-header Upgrade if terminal",
            )
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(cfg)

    def argv(self) -> list[str]:
        return [binary("haproxy"), "-db", "-f", str(self.config)]


async def check_config(proxy: ProxyProcess) -> None:
    """Each proxy's own syntax check of the rendered example (fails with its message)."""
    if isinstance(proxy, Nginx):
        argv = [*proxy.argv(), "-t"]
    else:
        assert isinstance(proxy, HAProxy)
        argv = [binary("haproxy"), "-c", "-f", str(proxy.config)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode(errors="replace")
