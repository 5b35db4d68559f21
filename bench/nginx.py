"""Debian's nginx as a plain WebSocket reverse proxy with stock buffer settings.

The baseline every relay figure is compared with. One worker, the upgrade headers, a long
read timeout and nothing else: on upgraded connections nginx relays through a
``proxy_buffer_size`` buffer (4 KiB by default). Config, pid, logs and temp paths live in
a temporary directory; nginx runs in the foreground (``daemon off``) as our child.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from bench.procs import Child, free_port

__all__ = ["NginxProcess", "find_nginx", "nginx_version"]

CONFIG = """\
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 19000;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """The nginx binary, or None: the bench never installs it (scripts/install-proxies does)."""
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def nginx_version(binary: str) -> str:
    result = subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=False)
    return (result.stderr or result.stdout).decode(errors="replace").strip()


class NginxProcess:
    """nginx in front of the fake upstream, on a free 127.0.0.1 port."""

    def __init__(self, binary: str, workdir: Path, upstream_port: int) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.dir / "nginx.conf"
        config.write_text(CONFIG.format(dir=self.dir, port=self.port, upstream=upstream_port))
        self.child = Child(
            "nginx",
            [binary, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(config)],
        )
        try:
            self._wait_ready(5.0)
        except BaseException:
            self.child.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Connect with retries, bounded: nginx prints nothing when it is ready."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.child.alive():
                log = (
                    (self.dir / "error.log").read_text()
                    if (self.dir / "error.log").exists()
                    else ""
                )
                raise RuntimeError(f"nginx exited: {self.child.tail()} {log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx not listening after {timeout:g}s") from None
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.child.pid

    def cpu(self) -> float:
        return self.child.cpu()

    def rss(self) -> int:
        return self.child.rss()

    def stop(self) -> None:
        self.child.stop(timeout=10)
