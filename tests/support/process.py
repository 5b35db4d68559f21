"""Running ``terminal-proxy`` as a real subprocess and reading its log as it comes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.logcapture import append_external_log

# The main listener's line (not "metrics listening on …").
LISTENING = re.compile(r"terminal-proxy \S+ listening on (https?://[0-9A-Za-z.:\[\]]+)")


class GatewayProcess:
    """``python -m terminal_proxy serve …`` with its stderr collected line by line."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        # Run in the child before exec (e.g. resource.setrlimit for a low fd limit).
        self.preexec_fn = preexec_fn
        self.lines: list[str] = []
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> GatewayProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "terminal_proxy",
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            preexec_fn=self.preexec_fn,
        )
        self._reader = asyncio.create_task(self._read(), name="gateway-process-stderr")
        line = await self.wait_for_line(lambda s: bool(LISTENING.search(s)) or "Traceback" in s)
        match = LISTENING.search(line)
        assert match, f"gateway did not start: {self.lines}"
        self.url = match.group(1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        append_external_log("gateway subprocess", self.lines)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 15) -> str:
        async with asyncio.timeout(timeout), self._changed:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                assert self.proc is not None
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"no matching line; output was: {self.lines}")
                await self._changed.wait()

    async def stop(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        async with asyncio.timeout(30):
            return await self.proc.wait()

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match
        return int(match.group(1)) * 1024


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "terminal_proxy",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def standalone_config(tmp_path: Path, **sections: Any) -> Path:
    """A serve config for tests that never reach authorization (connection handling,
    request parsing): a backend and upstream nobody listens on, plus ``sections``."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(b"s" * 32).decode())
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "authorization": {"backend": "http://127.0.0.1:9", "secret_file": str(secret_file)},
        "upstream": {"allowed_hosts": ["127.0.0.1:9"]},
        "logging": {"level": "info", "format": "text"},
        **sections,
    }
    path = tmp_path / "terminal-proxy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
