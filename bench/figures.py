"""The measurements: one function per figure, run once per variant and round.

A variant is where the clients connect: ``direct`` (the fake upstream itself), ``nginx``
(stock reverse proxy in front of it), ``gateway`` (terminal-proxy, authorizing against
the fake API and dialling the same upstream), ``gateway_base`` (the same, run from the
``--baseline`` commit's tree; added to every figure that has ``gateway`` when one is
given) or ``gateway_Nw`` (``--workers N``). Each call gets a fresh relay process, so
memory figures start from a clean baseline and no figure inherits another's state. Relay
CPU is read from ``/proc`` before and after the client process runs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.baseline import BASE, Tree, tree_env
from bench.gateway import GatewayProcess
from bench.nginx import NginxProcess
from bench.procs import CLK_TCK, ROOT, ClientError, Holder, cpu_seconds, run_client

__all__ = ["FIGURES", "NGINX_MISSING", "Bench", "Relay", "Settings"]

NGINX_MISSING = "nginx is not installed: run scripts/install-proxies (as root)"

GATEWAY_PATH = "/bench/project/-/environments/1/terminal.ws"
SETTLE = 0.3  # seconds for a relay to finish tearing sessions down before CPU is read


@dataclass(frozen=True)
class Settings:
    """Sizes and durations of one run (``FULL`` or ``SMOKE`` in bench.run)."""

    down_16k_count: int
    down_64_count: int
    up_16k_count: int
    echo_warmup: int
    echo_count: int
    idle_sessions: int
    hold_sessions: int
    hold_seconds: float
    hold_processes: int
    hold_batch: int
    setup_concurrency: int
    setup_seconds: float
    setup_workers_processes: int
    flood_sessions: int
    flood_seconds: float
    client_timeout: float


@dataclass
class Relay:
    """Where clients connect for one measurement, and the relay process if any."""

    variant: str
    params: dict[str, Any]
    proc: GatewayProcess | NginxProcess | None = None

    def cpu(self) -> float | None:
        return None if self.proc is None else self.proc.cpu()

    def rss(self) -> int | None:
        return None if self.proc is None else self.proc.rss()


@dataclass
class Bench:
    """The run's shared processes and settings."""

    settings: Settings
    workdir: Path
    upstream_port: int
    auth_port: int
    nginx_binary: str | None
    gateway_config: Path
    gateway_args: list[str]
    # The upstream's TLS listener and the CA file that signed it (None: no TLS figure).
    upstream_tls_port: int | None = None
    ca_file: Path | None = None
    # The --baseline commit's tree, for the gateway_base variant.
    baseline: Tree | None = None
    # Warning/error lines the gateway logged, per "figure/variant".
    gateway_problems: dict[str, list[str]] = field(default_factory=dict)
    # The harness's own servers (name -> pid), for where a figure's CPU went.
    services: dict[str, int] = field(default_factory=dict)
    current: str = ""

    @contextlib.contextmanager
    def relay(self, variant: str, extra_args: Sequence[str] = ()) -> Iterator[Relay]:
        if variant == "direct":
            yield Relay(variant, self._params(self.upstream_port, "/exec", prefixed=True))
            return
        if variant == "nginx":
            if self.nginx_binary is None:
                raise Skip(NGINX_MISSING)
            nginx = NginxProcess(self.nginx_binary, self.workdir / "nginx", self.upstream_port)
            try:
                yield Relay(variant, self._params(nginx.port, "/exec", prefixed=True), nginx)
            finally:
                nginx.stop()
            return
        tree, env = ROOT, None
        if variant == BASE:
            if self.baseline is None:
                raise Skip("no --baseline given")
            tree, env = self.baseline.path, tree_env(self.baseline.path)
        elif variant.startswith("gateway_"):  # gateway_1w, gateway_2w: that many workers
            workers = variant.removeprefix("gateway_").removesuffix("w")
            extra_args = [*extra_args, "--workers", workers]
        args = [*self.gateway_args, *extra_args]
        gateway = GatewayProcess(self.gateway_config, args, tree=tree, env=env)
        try:
            yield Relay(variant, self._params(gateway.port, GATEWAY_PATH, prefixed=False), gateway)
        finally:
            problems = gateway.problems()
            gateway.stop()
            if problems:
                self.gateway_problems[f"{self.current}/{variant}"] = problems[-20:]

    @staticmethod
    def _params(port: int, path: str, *, prefixed: bool) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": port, "path": path, "prefixed": prefixed}


class CpuSplit:
    """Where the CPU of one measurement went: the relay, each harness server, the client
    processes (``RUSAGE_CHILDREN``: the clients are the only children reaped meanwhile)
    and the whole machine (``/proc/stat``: how many of its cores were busy)."""

    def __init__(self, b: Bench, relay: Relay) -> None:
        self._relay = relay
        self._pids = dict(b.services)
        self._t0 = time.monotonic()
        self._relay0 = relay.cpu()
        self._services0 = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._clients0 = _children_cpu()
        self._machine0 = _machine_busy()

    def result(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        split: dict[str, float] = {}
        if self._relay0 is not None:
            split["relay"] = (self._relay.cpu() or 0.0) - self._relay0
        for name, pid in self._pids.items():
            split[name] = cpu_seconds(pid) - self._services0[name]
        split["clients"] = _children_cpu() - self._clients0
        busy = _machine_busy() - self._machine0
        return {
            "cpu_split_s": {k: round(v, 3) for k, v in split.items()},
            "wall_s": round(wall, 3),
            "machine_busy_cores": round(busy / wall, 2) if wall else None,
            "machine_cores": os.cpu_count(),
        }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores, not idle or iowait)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def _client(b: Bench, relay: Relay, mode: str, **params: Any) -> dict[str, Any]:
    """Run one client process against ``relay``; add the relay's CPU seconds."""
    cpu0 = relay.cpu()
    timeout = b.settings.client_timeout
    result = run_client(mode, {**relay.params, "timeout": 30, **params}, timeout)
    if cpu0 is not None:
        time.sleep(SETTLE)
        result["relay_cpu_s"] = (relay.cpu() or 0.0) - cpu0
    return result


def _per_mb(result: dict[str, Any]) -> None:
    if "relay_cpu_s" in result:
        result["cpu_ms_per_mb"] = result["relay_cpu_s"] * 1000 / (result["bytes"] / 1e6)


def down_16k(b: Bench, relay: Relay) -> dict[str, Any]:
    result = _client(b, relay, "down", size=16384, count=b.settings.down_16k_count)
    _per_mb(result)
    return result


def down_64(b: Bench, relay: Relay) -> dict[str, Any]:
    return _small_frames(b, relay, "down")


def down_64_browser(b: Bench, relay: Relay) -> dict[str, Any]:
    """down_64 read one message at a time, as a browser's onmessage does."""
    return _small_frames(b, relay, "down_messages")


def _small_frames(b: Bench, relay: Relay, mode: str) -> dict[str, Any]:
    count = b.settings.down_64_count
    result = _client(b, relay, mode, size=64, count=count)
    if "relay_cpu_s" in result:
        result["cpu_us_per_frame"] = result["relay_cpu_s"] * 1e6 / count
    return result


def up_16k(b: Bench, relay: Relay) -> dict[str, Any]:
    result = _client(b, relay, "up", size=16384, count=b.settings.up_16k_count)
    _per_mb(result)
    return result


def echo(b: Bench, relay: Relay) -> dict[str, Any]:
    s = b.settings
    result = _client(b, relay, "echo", warmup=s.echo_warmup, count=s.echo_count)
    if "relay_cpu_s" in result:
        result["cpu_us_per_round_trip"] = (
            result["relay_cpu_s"] * 1e6 / (s.echo_warmup + s.echo_count)
        )
    return result


def setup(b: Bench, relay: Relay) -> dict[str, Any]:
    """Open and close sessions, ``setup_concurrency`` at a time, from one client process."""
    return _setup(b, relay, b.settings.setup_concurrency)


def setup_1(b: Bench, relay: Relay) -> dict[str, Any]:
    """The same, one set-up at a time: the cost without any queueing."""
    return _setup(b, relay, 1)


def setup_tls(b: Bench, relay: Relay) -> dict[str, Any]:
    """``setup`` with a ``wss://`` upstream (kube-apiserver is always TLS).

    Through a gateway, ``tls=1`` in the query makes the fake API answer the upstream's TLS
    listener and its CA as ``CAPem``; ``direct`` clients speak TLS to that listener.
    """
    if b.upstream_tls_port is None or b.ca_file is None:
        raise Skip("the upstream has no TLS listener")
    if relay.variant == "direct":
        params = {"port": b.upstream_tls_port, "ca_file": str(b.ca_file)}
    else:
        params = {"query": "tls=1"}
    return _setup(b, relay, b.settings.setup_concurrency, **params)


def _setup(b: Bench, relay: Relay, concurrency: int, **params: Any) -> dict[str, Any]:
    s = b.settings
    split = CpuSplit(b, relay)
    result = _client(b, relay, "setup", concurrency=concurrency, duration=s.setup_seconds, **params)
    result.update(split.result())
    _per_session(result)
    return result


def _per_session(result: dict[str, Any]) -> None:
    if "relay_cpu_s" in result and result["sessions"]:
        result["cpu_ms_per_session"] = result["relay_cpu_s"] * 1000 / result["sessions"]


def setup_workers(b: Bench, relay: Relay) -> dict[str, Any]:
    """``setup`` from several client processes at once (the same for 1 and 2 workers).

    ``setup_concurrency`` loops in all, split over ``setup_workers_processes`` processes
    so one client's event loop is not what limits two workers.
    """
    s = b.settings
    processes = s.setup_workers_processes
    shares = [
        s.setup_concurrency // processes + (1 if i < s.setup_concurrency % processes else 0)
        for i in range(processes)
    ]
    cpu0 = relay.cpu()
    # All processes start their loops together, once every one of them is up.
    start_at = time.time() + 1.5
    params = {**relay.params, "duration": s.setup_seconds, "timeout": 30, "start_at": start_at}
    with ThreadPoolExecutor(processes) as pool:
        futures = [
            pool.submit(run_client, "setup", {**params, "concurrency": n}, s.client_timeout)
            for n in shares
        ]
        # Where the time goes, from when the loops start (the clients' CPU still includes
        # their start-up: it is counted when they are reaped).
        time.sleep(max(0.0, start_at - time.time()))
        split = CpuSplit(b, relay)
        results = [future.result() for future in futures]
    seconds = max(r["seconds"] for r in results)
    result: dict[str, Any] = {
        "sessions": sum(r["sessions"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "seconds": seconds,
        "sessions_per_s": sum(r["sessions_per_s"] for r in results),
        "per_process_sessions_per_s": [r["sessions_per_s"] for r in results],
        # The slower client process's percentiles.
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
    }
    if cpu0 is not None:
        time.sleep(SETTLE)
        result["relay_cpu_s"] = (relay.cpu() or 0.0) - cpu0
    # Where the time goes: relay, fake upstream, fake API, clients, and how many of the
    # machine's cores were busy (the whole window: start-up of the clients included).
    result.update(split.result())
    _per_session(result)
    return result


def idle_memory(b: Bench, relay: Relay) -> dict[str, Any]:
    """RSS delta of the relay with N idle sessions open, per session."""
    if relay.proc is None:
        raise Skip("no relay process")
    s = b.settings
    _hold(b, relay, sessions=10, processes=1, seconds=0.0)  # warm-up: first-use allocations
    time.sleep(0.5)
    before = relay.rss() or 0
    report = _hold(b, relay, sessions=s.idle_sessions, processes=1, seconds=1.0, sample=True)
    delta = report["rss_held"] - before
    report.update(
        rss_before=before,
        kib_per_session=delta / s.idle_sessions / 1024,
    )
    return report


def sessions(b: Bench, relay: Relay) -> dict[str, Any]:
    """Hold many sessions (split over several client processes), then verify each."""
    if relay.proc is None:
        raise Skip("no relay process")
    s = b.settings
    before = relay.rss() or 0
    report = _hold(
        b,
        relay,
        sessions=s.hold_sessions,
        processes=s.hold_processes,
        seconds=s.hold_seconds,
        sample=True,
    )
    report["rss_before"] = before
    report["rss_mb"] = report["rss_held"] / 1e6
    return report


def _hold(
    b: Bench,
    relay: Relay,
    *,
    sessions: int,
    processes: int,
    seconds: float,
    sample: bool = False,
) -> dict[str, Any]:
    s = b.settings
    shares = [
        sessions // processes + (1 if i < sessions % processes else 0) for i in range(processes)
    ]
    holders: list[Holder] = []
    try:
        for share in shares:
            holders.append(
                Holder({**relay.params, "sessions": share, "batch": s.hold_batch, "timeout": 30})
            )
        with ThreadPoolExecutor(len(holders)) as pool:
            ready = list(pool.map(lambda h: h.wait_ready(s.client_timeout), holders))
        started = time.monotonic()
        peak = 0
        while True:
            peak = max(peak, relay.rss() or 0)
            left = seconds - (time.monotonic() - started)
            if left <= 0:
                break
            time.sleep(min(1.0, left))
        held_rss = relay.rss() or 0
        with ThreadPoolExecutor(len(holders)) as pool:
            done = list(pool.map(lambda h: h.finish(True, s.client_timeout), holders))
    finally:
        for holder in holders:
            holder.stop()
    opened = sum(r["opened"] for r in done)
    errors = sum(r["open_errors"] + r["lost_while_held"] + r["echo_failed"] for r in done)
    result: dict[str, Any] = {
        "sessions": sessions,
        "opened": opened,
        "verified": sum(r["verified"] for r in done),
        "errors": errors,
        "open_errors": sum(r["open_errors"] for r in done),
        "lost_while_held": sum(r["lost_while_held"] for r in done),
        "echo_failed": sum(r["echo_failed"] for r in done),
        "error_samples": [e for r in ready for e in r.get("error_samples", [])][:5],
        "verify_errors": [e for r in done for e in r.get("verify_errors", [])][:5],
        "ramp_seconds": max(r["ramp_seconds"] for r in ready),
        "held_seconds": seconds,
    }
    if sample:
        result["rss_held"] = held_rss
        result["rss_peak"] = max(peak, held_rss)
    return result


def flood(b: Bench, relay: Relay) -> dict[str, Any]:
    """Several endless 16 KiB streams over two client processes; aggregate MB/s."""
    s = b.settings
    processes = 2
    shares = [
        s.flood_sessions // processes + (1 if i < s.flood_sessions % processes else 0)
        for i in range(processes)
    ]
    cpu0 = relay.cpu()
    start_at = time.time() + 1.5
    params = {
        **relay.params,
        "size": 16384,
        "start_at": start_at,
        "duration": s.flood_seconds,
        "timeout": 30,
    }
    with ThreadPoolExecutor(processes) as pool:
        results = list(
            pool.map(
                lambda n: run_client("flood", {**params, "sessions": n}, s.client_timeout), shares
            )
        )
    result: dict[str, Any] = {
        "sessions": s.flood_sessions,
        "mb_per_s": sum(r["mb_per_s"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "per_process_mb_per_s": [r["mb_per_s"] for r in results],
        "ended_early": sum(r["ended_early"] for r in results),
    }
    if cpu0 is not None:
        time.sleep(SETTLE)
        result["relay_cpu_s"] = (relay.cpu() or 0.0) - cpu0
    if result["ended_early"]:
        raise ClientError(f"{result['ended_early']} flood sessions ended early")
    return result


class Skip(Exception):
    """This variant does not apply to this figure."""


@dataclass(frozen=True)
class Figure:
    """One measurement and the variants it runs on."""

    name: str
    run: Callable[[Bench, Relay], dict[str, Any]]
    variants: tuple[str, ...] = ("direct", "nginx", "gateway")
    # Runs once per invocation, not once per round (the long holds).
    once: bool = False

    def variants_with(self, baseline: bool, round_index: int = 0) -> tuple[str, ...]:
        """The variants to run: with a baseline, ``gateway_base`` next to ``gateway``.

        After it in even rounds, before it in odd ones, so neither commit always runs
        second (on a shared machine whatever runs later inherits its neighbour's load).
        """
        chosen: list[str] = []
        for name in self.variants:
            if baseline and name == "gateway":
                pair = ["gateway", BASE]
                chosen += reversed(pair) if round_index % 2 else pair
            else:
                chosen.append(name)
        return tuple(chosen)


FIGURES: dict[str, Figure] = {
    f.name: f
    for f in (
        Figure("down_16k", down_16k),
        Figure("down_64", down_64),
        Figure("down_64_browser", down_64_browser),
        Figure("up_16k", up_16k),
        Figure("echo", echo),
        Figure("setup", setup),
        Figure("setup_1", setup_1),
        Figure("setup_tls", setup_tls, ("direct", "gateway")),
        Figure("setup_workers", setup_workers, ("gateway_1w", "gateway_2w")),
        Figure("idle_memory", idle_memory, ("nginx", "gateway")),
        Figure("workers", flood, ("direct", "nginx", "gateway_1w", "gateway_2w")),
        Figure("sessions", sessions, ("nginx", "gateway"), once=True),
    )
}
