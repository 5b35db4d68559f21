"""``python -m bench.profile``: where a session set-up's CPU goes, by py-spy.

Starts the bench's fake upstream and authorization API and one gateway process, runs the
``setup`` client (``--concurrency`` loops opening and closing sessions) while py-spy
samples the gateway, then sorts every sample into one bucket by its innermost frame that
names a part of the set-up (server handshake, authorization request, JWT, upstream dial,
TLS, session objects, logging, metrics, audit, event loop) and prints the gateway's CPU
per set-up split by bucket, in µs. ``--raw FILE`` keeps the collapsed stacks (for a flame
graph); docs/performance.md has the breakdown and what was done about it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.figures import GATEWAY_PATH
from bench.gateway import GatewayProcess, write_config
from bench.procs import python_child, run_client

__all__ = ["BUCKETS", "bucket_of", "main"]

# Parts named by a library, tried from the innermost frame outwards: a sample in one of
# these is that part's whichever code called it.
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JWT", ("/jwt/",)),
    ("logging", ("/logging/", "terminal_proxy/logs.py")),
    ("metrics", ("prometheus_client",)),
    ("audit", ("terminal_proxy/audit.py",)),
    ("TLS", ("/ssl.py", "sslproto")),
)
# Parts named by the gateway's own code (outermost frame first): the authorization
# request and the upstream dial both run aiohttp's client, told apart by their caller.
CALLERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("authorization request", ("terminal_proxy/authorization/", "terminal_proxy/httpclient.py")),
    ("upstream dial", ("terminal_proxy/upstream.py", "terminal_proxy/wsdial.py")),
)
# The rest, innermost frame first.
OTHERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("authorization request", ("/httpx/", "/httpcore/", "/h11/", "/anyio/", "/sniffio/")),
    ("upstream dial", ("aiohttp/client", "aiohttp/connector", "aiohappyeyeballs")),
    ("session objects", ("terminal_proxy/session/", "terminal_proxy/registry.py")),
    (
        "server handshake and HTTP",
        (
            "aiohttp/web_",
            "aiohttp/http_",
            "aiohttp/_http_",
            "aiohttp/streams",
            "aiohttp/_websocket",
            "terminal_proxy/handshake.py",
            "terminal_proxy/routes.py",
        ),
    ),
    ("event loop", ("asyncio/", "uvloop", "selectors")),
)
BUCKETS = LIBRARIES + CALLERS + OTHERS


def _first(frames: list[str], table: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    for frame in frames:
        for name, needles in table:
            if any(needle in frame for needle in needles):
                return name
    return None


def bucket_of(stack: str) -> str:
    """The bucket of one collapsed stack (``root;…;leaf``)."""
    frames = stack.split(";")
    inner = frames[::-1]
    return _first(inner, LIBRARIES) or _first(frames, CALLERS) or _first(inner, OTHERS) or "other"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native")
    parser.add_argument("--raw", help="keep py-spy's collapsed stacks in this file")
    parser.add_argument("--gateway-args", default="", help="extra terminal-proxy serve args")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    children = []
    with tempfile.TemporaryDirectory(prefix="tp-profile-") as tmp:
        workdir = Path(tmp)
        try:
            upstream, announced = python_child("upstream", "bench.upstream")
            children.append(upstream)
            auth, auth_announced = python_child(
                "authapi", "bench.authapi", "--upstream-port", str(announced["port"])
            )
            children.append(auth)
            config = write_config(workdir / "gateway", int(auth_announced["port"]))
            gateway = GatewayProcess(config, args.gateway_args.split())
            params = {"host": "127.0.0.1", "port": gateway.port, "path": GATEWAY_PATH}
            params |= {"prefixed": False, "timeout": 30}
            # Warm-up: first-use imports and allocations are not set-up cost.
            run_client("setup", {**params, "concurrency": 4, "duration": 1.0}, 120)
            raw = Path(args.raw) if args.raw else workdir / "stacks.txt"
            spy_argv = [py_spy, "record", "--pid", str(gateway.pid), "--format", "raw"]
            spy_argv += ["--rate", str(args.rate), "--output", str(raw)]
            spy_argv += ["--duration", str(int(args.seconds) + 2)]
            # --native must pause the process to unwind C frames; else sample without pausing.
            spy_argv.append("--native" if args.native else "--nonblocking")
            spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches before the load starts
            cpu0 = gateway.cpu()
            result = run_client(
                "setup",
                {**params, "concurrency": args.concurrency, "duration": args.seconds},
                args.seconds + 120,
            )
            cpu = gateway.cpu() - cpu0
            _, err = spy.communicate(timeout=args.seconds + 60)
            gateway.stop()
            if spy.returncode != 0 or not raw.exists():
                print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
                return 1
            print(_report(raw, cpu, result))
        finally:
            for child in reversed(children):
                child.stop()
    return 0


def _report(raw: Path, cpu: float, result: dict[str, object]) -> str:
    counts: Counter[str] = Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[bucket_of(stack)] += int(count)
    total = sum(counts.values()) or 1
    sessions = int(str(result.get("sessions", 0))) or 1
    per_setup_us = cpu * 1e6 / sessions
    lines = [
        f"set-ups: {sessions} ({result.get('sessions_per_s', 0):.0f}/s), errors "
        f"{result.get('errors')}, p50 {result.get('p50_ms', 0):.1f} ms, "
        f"p99 {result.get('p99_ms', 0):.1f} ms",
        f"gateway CPU per set-up: {per_setup_us:.0f} µs ({total} samples)",
        "",
        "| part of the set-up | share | µs per set-up |",
        "|---|---|---|",
    ]
    for name, samples in counts.most_common():
        share = samples / total
        lines.append(f"| {name} | {share:.0%} | {share * per_setup_us:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
