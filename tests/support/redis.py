"""Debian's ``redis-server`` as a child process on 127.0.0.1 (scripts/install-redis).

A random free port, no persistence (``--save "" --appendonly no``), ready when its log
says so and it answers PING (no sleeps). ``tls=`` serves TLS only (``--tls-port``) with a
trustme certificate for 127.0.0.1; ``password=`` requires AUTH. ``stop()``/``start()``
restart it on the same port with its data gone (what a Redis restart without
persistence does to the cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path
from typing import Any

import trustme
from redis.asyncio import Redis

from tests.support.logcapture import append_external_log

READY = "Ready to accept connections"


def redis_server_path() -> str:
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("redis-server is missing: run scripts/install-redis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    def __init__(
        self, workdir: Path, *, tls: trustme.CA | None = None, password: str | None = None
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.ca = tls
        self.ca_file: Path | None = None
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._args = [
            redis_server_path(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--loglevel",
            "notice",
        ]
        if password is not None:
            self._args += ["--requirepass", password]
        if tls is not None:
            cert = tls.issue_cert("127.0.0.1", "localhost")
            cert_file, key_file = workdir / "redis.pem", workdir / "redis.key"
            cert.private_key_pem.write_to_path(str(key_file))
            cert.cert_chain_pems[0].write_to_path(str(cert_file))
            self.ca_file = workdir / "ca.pem"
            tls.cert_pem.write_to_path(str(self.ca_file))
            self._args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert_file),
                "--tls-key-file",
                str(key_file),
                "--tls-ca-cert-file",
                str(self.ca_file),
                "--tls-auth-clients",
                "no",
            ]
        else:
            self._args += ["--port", str(self.port)]

    @property
    def url(self) -> str:
        scheme = "rediss" if self.ca is not None else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def cluster_config(self, **extra: Any) -> dict[str, Any]:
        """A ``cluster:`` section for this server (password file written when needed)."""
        section: dict[str, Any] = {"redis_url": self.url, **extra}
        if self.password is not None:
            password_file = self.workdir / "password"
            password_file.write_text(self.password + "\n")
            section["password_file"] = str(password_file)
        if self.ca_file is not None:
            section["tls_ca_file"] = str(self.ca_file)
        return section

    def client(self) -> Redis:
        options: dict[str, Any] = {"decode_responses": True, "password": self.password}
        if self.ca_file is not None:
            options["ssl_ca_certs"] = str(self.ca_file)
        return Redis.from_url(self.url, **options)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self._args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(15):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(f"redis-server did not start: {self.lines}")
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if READY in line:
                    break
        self._drain = asyncio.create_task(self._read_rest(), name="redis-server-log")
        client = self.client()
        try:
            assert await client.ping()
        finally:
            await client.aclose()

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    async def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to its clients, as when its host dies)."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain
        self.proc = None

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        append_external_log("redis-server", self.lines)
