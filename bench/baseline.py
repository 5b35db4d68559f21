"""``--baseline REV``: another commit's gateway, measured in the same invocation.

``baseline_tree(REV)`` checks REV out into a temporary detached git worktree and removes
it again on every exit path (error, Ctrl-C, SIGTERM: the harness turns SIGTERM into
``SystemExit``). The ``gateway_base`` variant runs the same ``python -m terminal_proxy
serve`` with that worktree as its working directory and first on ``PYTHONPATH``, so the
old package is imported even though the venv has the current tree installed in editable
mode (setuptools' editable finder sits at the end of ``sys.meta_path``, after the
``sys.path`` entries). ``imported_from`` asks a Python started exactly that way where
``terminal_proxy`` comes from, and the harness refuses to run when it is not the worktree.
The old tree's web page is not built: the bench does not load it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.procs import ROOT

__all__ = ["BASE", "Tree", "baseline_tree", "imported_from", "tree_env"]

BASE = "gateway_base"  # the variant name


@dataclass(frozen=True)
class Tree:
    """A checked-out commit the gateway can be run from."""

    rev: str
    commit: str
    path: Path


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


@contextlib.contextmanager
def baseline_tree(rev: str) -> Iterator[Tree]:
    """REV checked out in a temporary detached worktree, removed on exit."""
    commit = _git("rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
    parent = Path(tempfile.mkdtemp(prefix="terminal-proxy-bench-base-"))
    path = parent / "tree"
    try:
        _git("worktree", "add", "--detach", str(path), commit)
        yield Tree(rev=rev, commit=commit, path=path)
    finally:
        with contextlib.suppress(RuntimeError):
            _git("worktree", "remove", "--force", str(path))
        shutil.rmtree(parent, ignore_errors=True)
        with contextlib.suppress(RuntimeError):
            _git("worktree", "prune")


def tree_env(path: Path) -> dict[str, str]:
    """The environment that makes ``python`` import ``terminal_proxy`` from ``path``."""
    rest = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": str(path) + (os.pathsep + rest if rest else "")}


def imported_from(cwd: Path, env: dict[str, str]) -> str:
    """``terminal_proxy.__file__`` in a Python started with ``cwd`` and ``env``."""
    done = subprocess.run(
        [sys.executable, "-c", "import terminal_proxy; print(terminal_proxy.__file__)"],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot import terminal_proxy in {cwd}: {done.stderr.strip()}")
    return done.stdout.strip()
