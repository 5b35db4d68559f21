"""The performance harness works: ``python -m bench --smoke`` end to end.

No thresholds: CI machines are noisy. This proves that one invocation starts the fake
upstream, the fake authorization API, nginx and a real ``terminal-proxy serve`` process,
measures every figure on every variant, prints the table and writes the JSON.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

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
    "setup_cpu",
    "setup_rate",
    "setup_p50",
    "setup_p99",
    "cpu_per_mb",
    "workers",
)
# Rows with a same-run baseline measured straight to the upstream, and through nginx.
WITH_DIRECT = (
    "down_16k",
    "down_64",
    "down_64_browser",
    "up_16k",
    "echo_p50",
    "echo_p99",
    "setup_rate",
)
WITH_NGINX = (*WITH_DIRECT, "cpu_per_frame", "idle_memory", "sessions_held", "cpu_per_mb")


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
        if name == "workers" and "skipped" in row:
            assert row["skipped"].startswith("not supported by this build"), row
            continue
        assert _number(row["gateway"]), (name, row)
        if name in WITH_DIRECT:
            assert _number(row["direct"]), (name, row)
            assert _number(row["ratio_vs_direct"]), (name, row)
        if name in WITH_NGINX and doc["machine"]["nginx"]:
            assert _number(row["nginx"]), (name, row)
    if "skipped" not in rows["workers"]:
        assert _number(rows["workers"]["ratio_vs_1_worker"])
    held = rows["sessions_held"]
    assert held["gateway"] == doc["settings"]["hold_sessions"], held
