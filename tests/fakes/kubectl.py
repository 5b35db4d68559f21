"""Run a real kubectl against the fake kube-apiserver.

``fetch_kubectl()`` obtains kubectl v1.36.3 through ``scripts/fetch-kubectl`` (cached after the
first download). ``Kubectl.for_server(...)`` writes a kubeconfig for a fake server into a
scratch directory and runs kubectl with HOME and KUBECONFIG pointing there, so nothing on the
machine (``~/.kube``, proxies, ``KUBECTL_*`` settings) takes part.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "FETCH_SCRIPT",
    "KUBECTL_VERSION",
    "REPO_ROOT",
    "Kubectl",
    "KubectlResult",
    "KubectlUnavailable",
    "fetch_kubectl",
    "write_kubeconfig",
]

KUBECTL_VERSION = "v1.36.3"
REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch-kubectl"


class KubectlUnavailable(RuntimeError):
    """scripts/fetch-kubectl could not provide kubectl; the message says why."""


def fetch_kubectl(timeout: float = 600.0) -> Path:
    """Path of kubectl v1.36.3, downloading it on first use; KubectlUnavailable if impossible."""
    try:
        result = subprocess.run(
            [str(FETCH_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KubectlUnavailable(f"{FETCH_SCRIPT} could not run: {exc}") from exc
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise KubectlUnavailable(
            f"{FETCH_SCRIPT} failed (exit {result.returncode}):\n{result.stderr.strip()}"
        )
    path = Path(lines[-1])
    if not os.access(path, os.X_OK):
        raise KubectlUnavailable(f"{FETCH_SCRIPT} printed {path}, which is not executable")
    return path


def write_kubeconfig(
    path: Path,
    server_url: str,
    *,
    ca_pem: str | None,
    token: str | None,
    namespace: str = "default",
) -> Path:
    """Write a single-context kubeconfig for ``server_url``; returns ``path``."""
    cluster: dict[str, object] = {"server": server_url}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem.encode()).decode()
    user: dict[str, object] = {"token": token} if token is not None else {}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": cluster}],
        "users": [{"name": "fake-user", "user": user}],
        "contexts": [
            {
                "name": "fake",
                "context": {"cluster": "fake", "user": "fake-user", "namespace": namespace},
            }
        ],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class KubectlResult:
    """Exit code and output of one kubectl run."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    def __str__(self) -> str:
        return (
            f"kubectl {' '.join(self.args)} -> exit {self.returncode}\n"
            f"--- stdout ---\n{self.out[:2000]}\n--- stderr ---\n{self.err[:2000]}"
        )


@dataclass(frozen=True)
class Kubectl:
    """A kubectl binary bound to one kubeconfig and a private HOME."""

    binary: Path
    home: Path
    kubeconfig: Path

    @classmethod
    def for_server(
        cls,
        binary: Path,
        workdir: Path,
        server_url: str,
        *,
        ca_pem: str | None,
        token: str | None,
        namespace: str = "default",
    ) -> Kubectl:
        """Create ``workdir/home`` and ``workdir/kubeconfig`` for ``server_url``."""
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        kubeconfig = write_kubeconfig(
            workdir / "kubeconfig", server_url, ca_pem=ca_pem, token=token, namespace=namespace
        )
        return cls(binary, home, kubeconfig)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A minimal environment: no proxies, no KUBECTL_* from the caller's shell."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KUBECONFIG": str(self.kubeconfig),
            "NO_PROXY": "127.0.0.1,localhost",
            "LANG": "C.UTF-8",
        }
        env.update(extra or {})
        return env

    async def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> KubectlResult:
        """Run kubectl with ``args``; stdin is a pipe carrying ``stdin`` (or /dev/null)."""
        proc = await asyncio.create_subprocess_exec(
            str(self.binary),
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env(env),
        )
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate(stdin)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise TimeoutError(
                f"kubectl {' '.join(args)} did not finish within {timeout}s\n"
                f"stdout: {out[-2000:]!r}\nstderr: {err[-2000:]!r}"
            ) from None
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        assert proc.returncode is not None
        return KubectlResult(tuple(args), proc.returncode, out, err)
