"""Cluster mode's cost on session set-up: three replicas on one Redis against the same
three replicas without it, alternating in one invocation (docs/cluster.md, "Load").

    .venv/bin/python -m bench.cluster_load [--rounds 3] [--seconds 5] [--concurrency 16]

Each round runs, for each variant, three ``terminal-proxy serve`` replicas (``a``, ``b``,
``c``; the bench's fake upstream and authorization API) and one set-up client process
per replica, all starting together: every client opens and closes sessions for
``--seconds`` with ``--concurrency`` loops. Limits are on (``max_sessions`` and
``max_sessions_per_user`` 100,000) so that every admission goes to Redis in the cluster
variant. Reported per variant: sessions per second (all replicas), set-up latency
p50/p99, gateway CPU per set-up, and for the cluster variant Redis commands per set-up
(``INFO commandstats`` before and after: admissions, releases, heartbeats and
registry writes together, commands run inside scripts included) and scripts per set-up
(the admission's EVALSHA: the one round trip on the hot path; releases are batched in
pipelines off it). The Redis server
is Debian's ``redis-server`` (``scripts/install-redis``), without persistence.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.figures import GATEWAY_PATH
from bench.gateway import GatewayProcess, write_config
from bench.procs import Child, free_port, python_child, run_client, wait_until

REPLICAS = ("a", "b", "c")
LIMITS = "limits:\n  max_sessions: 100000\n  max_sessions_per_user: 100000\n"


def _redis_command(port: int, *words: str) -> str:
    """One command over RESP with a plain socket (the bench needs no Redis client)."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request.encode())
        data = b""
        while True:
            chunk = conn.recv(65536)
            data += chunk
            if not chunk or _complete(data):
                break
    return data.decode(errors="replace")


def _complete(data: bytes) -> bool:
    if data.startswith((b"+", b"-", b":")):
        return data.endswith(b"\r\n")
    if data.startswith(b"$"):
        head, _, rest = data.partition(b"\r\n")
        return len(rest) >= int(head[1:]) + 2
    return False


def _commands(port: int) -> dict[str, int]:
    """Calls per command Redis has run (INFO's own excluded)."""
    calls: dict[str, int] = {}
    for line in _redis_command(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            name, _, rest = line.partition(":")
            fields = dict(item.split("=", 1) for item in rest.split(","))
            calls[name.removeprefix("cmdstat_")] = int(fields["calls"])
    return calls


def _config(workdir: Path, auth_port: int, redis_port: int | None) -> Path:
    config = write_config(workdir, auth_port)
    text = config.read_text() + LIMITS
    if redis_port is not None:
        text += f"cluster:\n  redis_url: redis://127.0.0.1:{redis_port}/0\n"
    config.write_text(text)
    return config


def _round(
    variant: str, config: Path, seconds: float, concurrency: int, redis_port: int
) -> dict[str, Any]:
    gateways = [GatewayProcess(config, ["--replica-id", name]) for name in REPLICAS]
    try:
        cpu_before = [g.cpu() for g in gateways]
        commands_before = _commands(redis_port)
        start_at = time.time() + 1.0
        with ThreadPoolExecutor(len(gateways)) as pool:
            runs = [
                pool.submit(
                    run_client,
                    "setup",
                    {
                        "host": "127.0.0.1",
                        "port": g.port,
                        "path": GATEWAY_PATH,
                        "prefixed": False,
                        "concurrency": concurrency,
                        "duration": seconds,
                        "timeout": 30,
                        "start_at": start_at,
                    },
                    seconds + 60,
                )
                for g in gateways
            ]
            results = [r.result() for r in runs]
        cpu = sum(g.cpu() - before for g, before in zip(gateways, cpu_before, strict=True))
        after = _commands(redis_port)
        by_command = {k: v - commands_before.get(k, 0) for k, v in after.items()}
        by_command = {k: v for k, v in by_command.items() if v}
        commands = sum(by_command.values())
    finally:
        for g in gateways:
            g.stop()
    sessions = sum(r["sessions"] for r in results)
    return {
        "variant": variant,
        "sessions": sessions,
        "errors": sum(r["errors"] for r in results),
        "error_samples": [s for r in results for s in r.get("error_samples", [])][:5],
        "sessions_per_s": round(sum(r["sessions_per_s"] for r in results), 1),
        "p50_ms": round(max(r["p50_ms"] for r in results), 2),
        "p99_ms": round(max(r["p99_ms"] for r in results), 2),
        "cpu_ms_per_setup": round(cpu * 1000 / sessions, 3) if sessions else None,
        "redis_commands_per_setup": round(commands / sessions, 2) if sessions else None,
        # Scripts (EVALSHA) per set-up: the admissions, one round trip each (the commands
        # above include those a script runs inside Redis).
        "redis_scripts_per_setup": (
            round(by_command.get("evalsha", 0) / sessions, 3) if sessions else None
        ),
        "redis_commands": by_command,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_load", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16, help="loops per replica")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    server = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")
    if server is None:
        print("redis-server is missing: run scripts/install-redis", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="terminal-proxy-cluster-load-"))
    children: list[Child] = []
    try:
        upstream, announced = python_child("upstream", "bench.upstream")
        children.append(upstream)
        auth, auth_announced = python_child(
            "authapi", "bench.authapi", "--upstream-port", str(announced["port"])
        )
        children.append(auth)
        redis_port = free_port()
        argv_redis = [server, "--port", str(redis_port), "--bind", "127.0.0.1"]
        argv_redis += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        children.append(Child("redis", argv_redis))
        if not wait_until(lambda: _pong(redis_port), 15):
            print("redis-server did not answer PING", file=sys.stderr)
            return 2
        auth_port = int(auth_announced["port"])
        configs = {
            "alone": _config(workdir / "alone", auth_port, None),
            "cluster": _config(workdir / "cluster", auth_port, redis_port),
        }
        rounds: list[dict[str, Any]] = []
        for number in range(args.rounds):
            order = ("alone", "cluster") if number % 2 == 0 else ("cluster", "alone")
            for variant in order:
                result = _round(
                    variant, configs[variant], args.seconds, args.concurrency, redis_port
                )
                print(f"[round {number + 1}/{args.rounds}] {json.dumps(result)}", flush=True)
                rounds.append(result)
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = _summary(rounds)
    print(summary["table"])
    if args.out:
        doc = {
            "command": ["python", "-m", "bench.cluster_load", *(argv or sys.argv[1:])],
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "rounds": rounds,
            "summary": summary,
        }
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _pong(port: int) -> bool:
    try:
        return _redis_command(port, "PING").startswith("+PONG")
    except OSError:
        return False


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "sessions_per_s",
        "p50_ms",
        "p99_ms",
        "cpu_ms_per_setup",
        "redis_scripts_per_setup",
        "redis_commands_per_setup",
    )
    medians: dict[str, dict[str, float | None]] = {}
    for variant in ("alone", "cluster"):
        mine = [r for r in rounds if r["variant"] == variant]
        medians[variant] = {
            k: (
                statistics.median(r[k] for r in mine if r[k] is not None)
                if any(r[k] is not None for r in mine)
                else None
            )
            for k in keys
        }
    lines = [
        "| figure | 3 replicas alone | 3 replicas on Redis | difference |",
        "|---|---|---|---|",
    ]
    for k in keys:
        alone, cluster = medians["alone"][k], medians["cluster"][k]
        diff = "" if alone is None or cluster is None else f"{cluster - alone:+.2f}"
        lines.append(f"| {k} | {alone} | {cluster} | {diff} |")
    errors = sum(r["errors"] for r in rounds)
    lines.append(f"\nerrors: {errors} in {len(rounds)} runs")
    return {"medians": medians, "errors": errors, "table": "\n".join(lines)}


if __name__ == "__main__":
    sys.exit(main())
