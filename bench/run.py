"""``python -m bench``: start everything on 127.0.0.1, measure, print the table, write JSON.

One invocation starts the fake upstream and the fake authorization API once, then for
every round and figure runs the variants in order (direct, nginx, gateway and, with
``--baseline REV``, gateway_base: the gateway of commit REV, checked out in a temporary
worktree), each against a fresh relay process, with the clients in their own processes.
Figures marked ``once`` (the long hold of many sessions) run a single time after the
rounds. Every process is started in its own process group and stopped on every path
(the worktree is removed on every path too).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.baseline import BASE, Tree, baseline_tree, imported_from, tree_env
from bench.common import uvloop_available
from bench.figures import FIGURES, NGINX_MISSING, Bench, Settings, Skip
from bench.gateway import serve_help, write_config
from bench.nginx import find_nginx, nginx_version
from bench.procs import ROOT, Child, python_child
from bench.report import ROWS, build_rows, format_table

__all__ = ["FULL", "SMOKE", "main"]

FULL = Settings(
    down_16k_count=12_800,  # 200 MiB
    down_64_count=200_000,
    up_16k_count=12_800,
    echo_warmup=200,
    echo_count=5_000,
    idle_sessions=2_000,
    hold_sessions=9_000,
    hold_seconds=60.0,
    hold_processes=3,
    hold_batch=100,
    setup_concurrency=32,
    setup_seconds=5.0,
    setup_workers_processes=2,
    flood_sessions=8,
    flood_seconds=5.0,
    client_timeout=600.0,
)
SMOKE = Settings(
    down_16k_count=640,  # 10 MiB
    down_64_count=10_000,
    up_16k_count=640,
    echo_warmup=20,
    echo_count=200,
    idle_sessions=100,
    hold_sessions=200,
    hold_seconds=3.0,
    hold_processes=2,
    hold_batch=50,
    setup_concurrency=8,
    setup_seconds=1.0,
    setup_workers_processes=2,
    flood_sessions=8,
    flood_seconds=1.0,
    client_timeout=120.0,
)
# The headline number of each figure, for progress lines.
PROGRESS = {
    "down_16k": ("mb_per_s", "MB/s"),
    "down_64": ("mb_per_s", "MB/s"),
    "down_64_browser": ("mb_per_s", "MB/s"),
    "up_16k": ("mb_per_s", "MB/s"),
    "echo": ("p50_us", "µs p50"),
    "setup": ("sessions_per_s", "sessions/s"),
    "setup_1": ("p50_ms", "ms p50"),
    "setup_tls": ("sessions_per_s", "sessions/s"),
    "setup_workers": ("sessions_per_s", "sessions/s"),
    "idle_memory": ("kib_per_session", "KiB/session"),
    "workers": ("mb_per_s", "MB/s"),
    "sessions": ("verified", "sessions verified"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="terminal-proxy performance harness"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, 1 round: proves the harness works"
    )
    names = sorted({*FIGURES, *(spec.key for spec in ROWS)})
    parser.add_argument(
        "--only", metavar="FIG[,FIG]", help="run only these figures: " + ", ".join(names)
    )
    parser.add_argument(
        "--skip",
        metavar="FIG[,FIG]",
        help="leave these figures out, e.g. --skip sessions (the ~4 minute hold of 9,000)",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "results" / "latest.json"), help="JSON output"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the gateway of git revision REV (a temporary worktree) as gateway_base",
    )
    parser.add_argument(
        "--gateway-args",
        default="",
        metavar='"ARGS"',
        help='extra arguments for terminal-proxy serve, e.g. "--workers 2"',
    )
    return parser


def _selected(only: str | None, skip: str | None = None) -> list[str]:
    chosen = _figures(only) if only else list(FIGURES)
    left_out = _figures(skip) if skip else []
    return [f for f in FIGURES if f in chosen and f not in left_out]


def _figures(names: str) -> list[str]:
    """Figure or row names (comma-separated) as figure names."""
    by_row = {spec.key: spec.figure for spec in ROWS}
    chosen: list[str] = []
    for name in names.split(","):
        name = name.strip()
        figure = name if name in FIGURES else by_row.get(name)
        if figure is None:
            raise SystemExit(f"python -m bench: unknown figure {name!r}")
        if figure not in chosen:
            chosen.append(figure)
    return chosen


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    rounds = 1 if args.smoke else max(1, args.rounds)
    figures = _selected(args.only, args.skip)
    gateway_args = shlex.split(args.gateway_args)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        # Unwound in reverse: children stopped, then the work directory and the worktree.
        baseline = None
        if args.baseline:
            _log(f"checking out {args.baseline} in a temporary worktree…")
            baseline = stack.enter_context(baseline_tree(args.baseline))
        workdir = Path(tempfile.mkdtemp(prefix="terminal-proxy-bench-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        children: list[Child] = []

        def stop_children() -> None:
            for child in reversed(children):
                child.stop()

        stack.callback(stop_children)
        imports = _imports(baseline)
        nginx = None
        if any(v == "nginx" for f in figures for v in FIGURES[f].variants):
            nginx = find_nginx()
            if nginx is None:
                _log(f"{NGINX_MISSING}: its columns will be empty")
        skipped: dict[str, str] = {}
        for name in ("workers", "setup_workers"):
            if name in figures and "--workers" not in serve_help():
                skipped[name] = (
                    "not supported by this build (terminal-proxy serve has no --workers)"
                )
        tls = _tls_files(workdir / "tls") if "setup_tls" in figures else None
        if "setup_tls" in figures and tls is None:
            skipped["setup_tls"] = "trustme is not installed (pip install -e '.[test]')"
        upstream, announced = python_child(
            "upstream", "bench.upstream", *(("--tls-cert", str(tls[0])) if tls else ())
        )
        children.append(upstream)
        upstream_port, tls_port = int(announced["port"]), announced.get("tls_port")
        auth_args = ["--upstream-port", str(upstream_port)]
        if tls:
            auth_args += ["--tls-port", str(tls_port), "--ca-file", str(tls[1])]
        auth, auth_announced = python_child("authapi", "bench.authapi", *auth_args)
        children.append(auth)
        bench = Bench(
            settings=settings,
            workdir=workdir,
            upstream_port=upstream_port,
            auth_port=int(auth_announced["port"]),
            nginx_binary=nginx,
            gateway_config=write_config(workdir / "gateway", int(auth_announced["port"])),
            gateway_args=gateway_args,
            upstream_tls_port=tls_port,
            ca_file=tls[1] if tls else None,
            baseline=baseline,
            services={"upstream": upstream.pid, "authapi": auth.pid},
        )
        results, errors = _measure(bench, figures, rounds, skipped)
        rows = build_rows(results, skipped, smoke=args.smoke)
        table = format_table(rows, baseline=baseline is not None)
        print(table, flush=True)
        doc = {
            "schema": 2,
            "command": ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])],
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 1),
            "smoke": args.smoke,
            "rounds": rounds,
            "gateway_args": gateway_args,
            "settings": settings.__dict__,
            "machine": _machine(nginx),
            "imports": imports,
            "baseline": None
            if baseline is None
            else {"rev": baseline.rev, "commit": baseline.commit, "tree": str(baseline.path)},
            "rows": rows,
            "table": table,
            "results": results,
            "skipped": skipped,
            "errors": errors,
            "gateway_problems": bench.gateway_problems,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        _log(f"wrote {out} in {doc['duration_s']} s; {len(errors)} errors")
        for error in errors:
            _log(f"  error: {error}")
        return 1 if errors else 0
    raise AssertionError("unreachable")  # ExitStack does not swallow exceptions


def _imports(baseline: Tree | None) -> dict[str, str]:
    """Where each gateway variant imports ``terminal_proxy`` from; refuses a wrong base."""
    imports = {"gateway": imported_from(ROOT, {})}
    _log(f"gateway imports {imports['gateway']}")
    if baseline is not None:
        found = imported_from(baseline.path, tree_env(baseline.path))
        if not Path(found).resolve().is_relative_to(baseline.path.resolve()):
            raise SystemExit(
                f"python -m bench: {BASE} would import {found}, not the tree of {baseline.rev}"
            )
        imports[BASE] = found
        _log(f"{BASE} imports {found} ({baseline.rev} = {baseline.commit[:12]})")
    return imports


def _tls_files(directory: Path) -> tuple[Path, Path] | None:
    """A CA and a certificate for 127.0.0.1 signed by it: (key + chain PEM, CA PEM)."""
    try:
        import trustme
    except ImportError:
        return None
    directory.mkdir(parents=True)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, ca_file = directory / "upstream.pem", directory / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    ca.cert_pem.write_to_path(str(ca_file))
    return chain, ca_file


def _measure(
    bench: Bench, figures: list[str], rounds: int, skipped: dict[str, str]
) -> tuple[dict[str, list[dict[str, dict[str, Any]]]], list[str]]:
    results: dict[str, list[dict[str, dict[str, Any]]]] = {}
    errors: list[str] = []
    plan: list[tuple[int, str]] = [
        (r, f) for r in range(rounds) for f in figures if not FIGURES[f].once and f not in skipped
    ]
    plan += [(0, f) for f in figures if FIGURES[f].once and f not in skipped]
    for round_index, name in plan:
        figure = FIGURES[name]
        by_variant: dict[str, dict[str, Any]] = {}
        for variant in figure.variants_with(bench.baseline is not None, round_index):
            bench.current = name
            when = "once" if figure.once else f"round {round_index + 1}/{rounds}"
            label = f"[{when}] {name} {variant}"
            t0 = time.monotonic()
            try:
                with bench.relay(variant) as relay:
                    result = figure.run(bench, relay)
            except Skip as exc:
                result = {"skipped": str(exc)}
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
                errors.append(f"{label}: {result['error']}")
            by_variant[variant] = result
            metric, unit = PROGRESS[name]
            value = result.get(metric)
            shown = f"{value:,.4g} {unit}" if isinstance(value, int | float) else result
            _log(f"{label}: {shown} ({time.monotonic() - t0:.1f} s)")
        results.setdefault(name, []).append(by_variant)
    return results, errors


def _machine(nginx: str | None) -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = ""
    meminfo = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=False
        )
        .stdout.decode()
        .strip()
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": meminfo,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "terminal_proxy": version("terminal-proxy"),
        "uvloop_in_bench_processes": uvloop_available(),
        "nginx": nginx_version(nginx) if nginx else None,
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "commit": commit or None,
    }
