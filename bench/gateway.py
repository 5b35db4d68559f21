"""terminal-proxy as a real ``terminal-proxy serve`` process, configured for the bench."""

from __future__ import annotations

import base64
import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.procs import ROOT, Child, free_port, listening_sockets

__all__ = ["GatewayProcess", "serve_help", "write_config"]

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")

CONFIG = """\
# Written by bench/gateway.py for one benchmark run.
listen: 127.0.0.1:0
authorization:
  backend: http://127.0.0.1:{auth_port}
  secret_file: {secret}
upstream:
  allowed_hosts: ["127.0.0.1:*"]
browser:
  max_message_size: 4MiB
session:
  shutdown_grace: 0s
logging:
  level: warning
"""


def write_config(workdir: Path, auth_port: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    secret = workdir / "secret"
    secret.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    secret.chmod(0o600)
    config = workdir / "terminal-proxy.yaml"
    config.write_text(CONFIG.format(auth_port=auth_port, secret=secret))
    return config


def serve_help(tree: Path = ROOT, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "terminal_proxy", "serve", "--help"],
        cwd=tree,
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.stdout.decode(errors="replace")


def workers_in(args: Sequence[str]) -> int:
    """The last ``--workers N`` in ``args`` (argparse semantics), else 1."""
    count = 1
    for i, arg in enumerate(args):
        if arg == "--workers" and i + 1 < len(args):
            count = int(args[i + 1])
        elif arg.startswith("--workers="):
            count = int(arg.split("=", 1)[1])
    return count


class GatewayProcess:
    """``python -m terminal_proxy serve --config FILE --listen 127.0.0.1:PORT [args]``.

    The port is chosen here so readiness does not depend on the log level (the
    ``listening on`` line is an info line, and the bench runs at ``warning``): the gateway
    is ready when every worker's socket listens on the port (``/proc/net/tcp``) and
    ``/-/health`` answers. A ``listening on`` line, when logged, is checked too.

    ``tree`` is the source tree it runs from (its working directory, so ``python -m``
    imports that tree's ``terminal_proxy``; ``env`` puts it first on ``PYTHONPATH`` too).
    """

    def __init__(
        self,
        config: Path,
        extra_args: Sequence[str] = (),
        *,
        tree: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.tree = tree
        self.workers = workers_in(extra_args)
        argv = [
            sys.executable,
            "-m",
            "terminal_proxy",
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{self.port}",
            *extra_args,
        ]
        self.child = Child("gateway", argv, cwd=tree, env=env)
        try:
            self._wait_ready(30.0)
        except BaseException:
            self.child.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise RuntimeError(
                    f"gateway exited {self.child.proc.returncode}: {self.child.tail()}"
                )
            for line in list(self.child.lines):
                match = LISTENING.search(line)
                if match and int(match.group(1)) != self.port:
                    raise RuntimeError(f"gateway listens elsewhere: {line}")
            if listening_sockets(self.port) >= self.workers and self._healthy():
                self._check_tree()
                return
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout:g}s: {self.child.tail()}")

    def _check_tree(self) -> None:
        """The process runs in the tree it was asked to (``python -m`` imports from there)."""
        cwd = Path(os.readlink(f"/proc/{self.child.pid}/cwd"))
        if cwd.resolve() != self.tree.resolve():
            raise RuntimeError(f"gateway runs in {cwd}, not in {self.tree}")

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/-/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    @property
    def pid(self) -> int:
        return self.child.pid

    def cpu(self) -> float:
        return self.child.cpu()

    def rss(self) -> int:
        return self.child.rss()

    def problems(self) -> list[str]:
        """Warning and error lines the gateway logged (the bench runs at ``warning``)."""
        return [line for line in self.child.lines if " WARNING " in line or " ERROR " in line]

    def stop(self) -> None:
        self.child.stop(timeout=20)
