"""The performance harness works: ``python -m bench --smoke`` end to end.

No thresholds: CI machines are noisy. This proves that one invocation starts the fake
upstream, the fake authorization API, nginx and a real ``terminal-proxy serve`` process,
measures every figure on every variant, prints the table and writes the JSON; and that
``--baseline REV`` runs REV's gateway from a temporary worktree it removes afterwards.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.authapi import Upstream, channel_body
from bench.baseline import BASE, baseline_tree, imported_from, tree_env
from bench.figures import FIGURES

ROOT = Path(__file__).resolve().parent.parent

# Every row the harness reports; each needs a number for the gateway.
ROWS = (
    "down_16k",
    "down_64",
    "down_64_browser",
    "cpu_per_frame",
    "up_16k",
    "echo_p50",
    "echo_p99",
    "idle_memory",
    "sessions_held",
    "sessions_rss",
    "sessions_open",
    "setup_cpu",
    "setup_1_cpu",
    "setup_1_p50",
    "setup_rate",
    "setup_p50",
    "setup_p99",
    "setup_workers",
    "setup_tls_cpu",
    "setup_tls_rate",
    "cpu_per_mb",
    "workers",
)
# Figures that need serve --workers (skipped as a whole by a build without it).
NEEDS_WORKERS = ("workers", "setup_workers")
# Rows with a same-run baseline measured straight to the upstream, and through nginx.
WITH_DIRECT = (
    "down_16k",
    "down_64",
    "down_64_browser",
    "up_16k",
    "echo_p50",
    "echo_p99",
    "setup_rate",
    "setup_1_p50",
    "setup_tls_rate",
)
WITH_NGINX = (
    *(r for r in WITH_DIRECT if r != "setup_tls_rate"),
    "cpu_per_frame",
    "idle_memory",
    "sessions_held",
    "cpu_per_mb",
    "setup_cpu",
    "setup_1_cpu",
)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.bench
@pytest.mark.timeout(400)
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "| figure | unit | gateway | direct | nginx |" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True
    assert doc["errors"] == []
    assert doc["machine"]["nproc"] >= 1
    rows = doc["rows"]
    assert set(rows) == set(ROWS)
    for name in ROWS:
        row = rows[name]
        assert name in done.stdout
        if name in NEEDS_WORKERS and "skipped" in row:
            assert row["skipped"].startswith("not supported by this build"), row
            continue
        assert _number(row["gateway"]), (name, row)
        if name in WITH_DIRECT:
            assert _number(row["direct"]), (name, row)
            assert _number(row["ratio_vs_direct"]), (name, row)
        if name in WITH_NGINX and doc["machine"]["nginx"]:
            assert _number(row["nginx"]), (name, row)
    for name in NEEDS_WORKERS:
        if "skipped" not in rows[name]:
            assert _number(rows[name]["ratio_vs_1_worker"]), rows[name]
    held = rows["sessions_held"]
    assert held["gateway"] == doc["settings"]["hold_sessions"], held
    # Without --baseline there is no gateway_base and no base column.
    assert doc["baseline"] is None
    assert "vs base" not in done.stdout
    assert all(row.get("gateway_base") is None for row in rows.values())


@pytest.mark.bench
@pytest.mark.timeout(150)
def test_bench_baseline_setup(tmp_path: Path) -> None:
    """``--baseline HEAD``: both gateways measured, and the worktree gone afterwards."""
    out = tmp_path / "baseline.json"
    argv = ["--baseline", "HEAD", "--smoke", "--only", "setup", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "| figure | unit | gateway | base | vs base | direct | nginx |" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["errors"] == []
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert doc["baseline"]["commit"] == head
    tree = Path(doc["baseline"]["tree"])
    assert doc["imports"][BASE].startswith(f"{tree}/"), doc["imports"]
    assert doc["imports"]["gateway"].startswith(f"{ROOT}/"), doc["imports"]
    assert set(doc["results"]["setup"][0]) == {"direct", "nginx", "gateway", BASE}
    for name in ("setup_cpu", "setup_rate", "setup_p50", "setup_p99"):
        row = doc["rows"][name]
        assert _number(row["gateway_base"]), (name, row)
        assert _number(row["ratio_vs_base"]), (name, row)
    assert not tree.exists()
    assert str(tree) not in _worktrees()


def test_baseline_tree_imports_the_old_tree_and_is_removed() -> None:
    """The checked-out tree wins over the venv's editable install, and leaves no trace."""
    with baseline_tree("HEAD") as tree:
        assert (tree.path / "terminal_proxy" / "__init__.py").is_file()
        assert str(tree.path) in _worktrees()
        # PYTHONPATH alone (run from elsewhere) already beats the editable finder.
        found = imported_from(Path("/"), tree_env(tree.path))
        assert found == str(tree.path / "terminal_proxy" / "__init__.py")
        assert imported_from(Path("/"), {}).startswith(f"{ROOT}/")
        path = tree.path
    assert not path.exists()
    assert str(path) not in _worktrees()


def test_baseline_tree_removed_when_the_run_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), baseline_tree("HEAD") as tree:
        path = tree.path
        raise RuntimeError("boom")
    assert not path.exists()
    assert str(path) not in _worktrees()


def test_baseline_tree_refuses_an_unknown_revision() -> None:
    with pytest.raises(RuntimeError, match="rev-parse"), baseline_tree("no-such-rev-xyz"):
        pass


def test_authorization_answers_the_tls_upstream_with_its_ca() -> None:
    upstream = Upstream(port=1000, tls_port=2000, ca_pem="PEM")
    plain = json.loads(channel_body(upstream, "mode=idle"))["Channel"]
    assert plain["Url"] == "ws://127.0.0.1:1000/exec?mode=idle"
    assert "CAPem" not in plain
    tls = json.loads(channel_body(upstream, "mode=idle&tls=1"))["Channel"]
    assert tls["Url"] == "wss://127.0.0.1:2000/exec?mode=idle&tls=1"
    assert tls["CAPem"] == "PEM"


def test_baseline_variant_beside_the_gateway_alternating() -> None:
    setup = FIGURES["setup"]
    assert setup.variants_with(False) == ("direct", "nginx", "gateway")
    assert setup.variants_with(True, 0) == ("direct", "nginx", "gateway", BASE)
    assert setup.variants_with(True, 1) == ("direct", "nginx", BASE, "gateway")
    assert FIGURES["workers"].variants_with(True) == FIGURES["workers"].variants


def _worktrees() -> str:
    return subprocess.run(
        ["git", "worktree", "list", "--porcelain"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
