"""Child processes of the harness and what ``/proc`` says about them.

Every child runs in its own process group and is killed (SIGTERM, then SIGKILL) on every
path by ``stop()``; ``Services`` stops everything it started, in reverse order. CPU is
user+sys from ``/proc/PID/stat`` and RSS is ``VmRSS`` from ``/proc/PID/status``, both
summed over the process and its descendants (a gateway's workers, nginx's worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "Child",
    "ClientError",
    "Holder",
    "cpu_seconds",
    "free_port",
    "listening_sockets",
    "rss_bytes",
    "run_client",
    "tree",
]

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class ClientError(RuntimeError):
    """A client process failed, timed out or printed no result."""


# /proc ---------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    found = [pid]
    i = 0
    while i < len(found):
        current = found[i]
        i += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{current}/task/{task}/children").read_text()
                    found.extend(int(child) for child in text.split())
    return found


def cpu_seconds(pid: int) -> float:
    """User+sys CPU seconds of ``pid`` and its live descendants."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{member}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and its live descendants, in bytes."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on 127.0.0.1:``port`` (SO_REUSEPORT workers: one each)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                count += 1
    return count


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Long-lived children --------------------------------------------------------------------


class Child:
    """A long-lived child process in its own process group, stderr kept (last lines)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.lines: deque[str] = deque(maxlen=200)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def read_json_line(self, timeout: float) -> dict[str, Any]:
        """The first line of stdout as JSON (the child's port announcement)."""
        assert self.proc.stdout is not None
        result: list[bytes] = []
        reader = threading.Thread(
            target=lambda: result.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"{self.name} did not start: {self.tail()}")
        doc: dict[str, Any] = json.loads(result[0])
        return doc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 20) -> str:
        return "\n".join(list(self.lines)[-n:])

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def python_child(name: str, module: str, *args: str) -> tuple[Child, dict[str, Any]]:
    """Start ``python -m module args`` that prints ``{"port": N, ...}``; it and that line."""
    child = Child(name, [sys.executable, "-m", module, *args], stdout=True)
    try:
        announced = child.read_json_line(15)
        int(announced["port"])
    except BaseException:
        child.stop()
        raise
    return child, announced


# Clients -----------------------------------------------------------------------------


def run_client(mode: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.client MODE PARAMS`` to completion; its JSON result."""
    argv = [sys.executable, "-m", "bench.client", mode, json.dumps(params)]
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            capture_output=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClientError(f"client {mode} timed out after {timeout:g}s") from exc
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if not lines:
        err = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise ClientError(f"client {mode} exited {done.returncode}: {' | '.join(err)}")
    result: dict[str, Any] = json.loads(lines[-1])
    if done.returncode != 0 or "error" in result:
        raise ClientError(f"client {mode}: {result.get('error', done.returncode)}")
    return result


class Holder:
    """A ``hold`` client: opens sessions, reports, holds, verifies on cue."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.child = Child(
            "holder",
            [sys.executable, "-m", "bench.client", "hold", json.dumps(params)],
            stdout=True,
        )

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        return self._line(timeout)

    def finish(self, verify: bool, timeout: float) -> dict[str, Any]:
        assert self.child.proc.stdin is not None
        self.child.proc.stdin.write(b"verify\n" if verify else b"close\n")
        self.child.proc.stdin.flush()
        return self._line(timeout)

    def _line(self, timeout: float) -> dict[str, Any]:
        try:
            return self.child.read_json_line(timeout)
        except RuntimeError as exc:
            raise ClientError(f"holder: no report in {timeout:g}s: {self.child.tail(5)}") from exc

    def stop(self) -> None:
        self.child.stop(timeout=5)


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
