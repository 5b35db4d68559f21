"""From per-round results to the table and the JSON rows: medians, ratios, targets.

A row's value for a variant is the median over rounds; a ratio is the median of the
per-round ratios (gateway / baseline in the same round), never a ratio of medians. With
``--baseline REV`` each row whose gateway variant is ``gateway`` also has ``gateway_base``
(REV's gateway, same round) and ``ratio_vs_base`` (this tree / REV, per round, median):
below 1 is better for CPU, latency, memory and time, above 1 for rates.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.baseline import BASE

__all__ = ["ROWS", "build_rows", "format_table"]

RoundResults = list[dict[str, dict[str, Any]]]  # per round: variant -> client result
Check = Callable[[dict[str, Any]], tuple[bool | None, str]]


@dataclass(frozen=True)
class RowSpec:
    key: str
    figure: str
    title: str
    unit: str
    metric: str
    target: str
    check: Check
    gateway: str = "gateway"


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


# Checks --------------------------------------------------------------------------------


def _ratios_at_least(direct: float | None = None, nginx: float | None = None) -> Check:
    def check(row: dict[str, Any]) -> tuple[bool | None, str]:
        parts, met = [], True
        for name, floor in (("nginx", nginx), ("direct", direct)):
            if floor is None:
                continue
            ratio = row[f"ratio_vs_{name}"]
            parts.append(f"{_x(ratio)} {name}")
            met = met and ratio is not None and ratio >= floor
        return met, ", ".join(parts)

    return check


def _at_most(limit: float) -> Check:
    def check(row: dict[str, Any]) -> tuple[bool | None, str]:
        value = row["gateway"]
        return (value is not None and value <= limit), fmt(value)

    return check


def _at_least(floor: float) -> Check:
    def check(row: dict[str, Any]) -> tuple[bool | None, str]:
        value = row["gateway"]
        return (value is not None and value >= floor), fmt(value)

    return check


def _report_only(row: dict[str, Any]) -> tuple[bool | None, str]:
    return None, "reported"


def _echo_p50(row: dict[str, Any]) -> tuple[bool | None, str]:
    diffs = [
        r["gateway"] - r["direct"]
        for r in row["per_round"]
        if r.get("gateway") is not None and r.get("direct") is not None
    ]
    diff = _median(diffs)
    if diff is None:
        return False, "–"
    return diff <= 100, f"direct {diff:+.0f} µs"


def _held(row: dict[str, Any]) -> tuple[bool | None, str]:
    raw = row["raw"]
    if not raw:
        return False, "–"
    result = raw[-1]
    if "verified" not in result:
        return False, "–"
    held, errors, wanted = result["verified"], result["errors"], result["sessions"]
    return held >= wanted and errors == 0, f"{held:,} held, {errors} errors"


def _vs_one_worker(floor: float | None) -> Check:
    """``gateway_2w`` against ``gateway_1w`` of the same round; met when ≥ ``floor``."""

    def check(row: dict[str, Any]) -> tuple[bool | None, str]:
        ratios = [_ratio(r.get("gateway_2w"), r.get("gateway_1w")) for r in row["per_round"]]
        ratio = _median(ratios)
        row["ratio_vs_1_worker"] = ratio
        one = _median([r.get("gateway_1w") for r in row["per_round"]])
        row["gateway_1w"] = one
        met = None if floor is None else ratio is not None and ratio >= floor
        return met, f"{_x(ratio)} 1 worker ({fmt(one)})" + _where(row["raw"])

    return check


def _where(raw: list[dict[str, Any]]) -> str:
    """Where the CPU of the last round went (figures that measured it): seconds per
    process kind, and how many of the machine's cores were busy."""
    last = raw[-1] if raw else {}
    split = last.get("cpu_split_s")
    if not isinstance(split, dict):
        return ""
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in split.items())
    busy = last.get("machine_busy_cores")
    cores = last.get("machine_cores")
    return f"; CPU s: {parts}; {busy} of {cores} cores busy"


ROWS: tuple[RowSpec, ...] = (
    RowSpec(
        "down_16k",
        "down_16k",
        "upstream→browser, 16 KiB frames",
        "MB/s",
        "mb_per_s",
        "≥ 1.0× nginx, ≥ 0.6× direct",
        _ratios_at_least(direct=0.6, nginx=1.0),
    ),
    RowSpec(
        "down_64",
        "down_64",
        "upstream→browser, 64 B frames (payload)",
        "MB/s",
        "mb_per_s",
        "≥ 0.5× nginx",
        _ratios_at_least(nginx=0.5),
    ),
    RowSpec(
        "cpu_per_frame",
        "down_64",
        "relay CPU per upstream frame, 64 B",
        "µs/frame",
        "cpu_us_per_frame",
        "≤ 5 µs",
        _at_most(5.0),
    ),
    RowSpec(
        "down_64_browser",
        "down_64_browser",
        "upstream→browser, 64 B frames, read one message at a time (browser-like client)",
        "MB/s",
        "mb_per_s",
        "report",
        _report_only,
    ),
    RowSpec(
        "up_16k",
        "up_16k",
        "browser→upstream, 16 KiB frames",
        "MB/s",
        "mb_per_s",
        "≥ 0.6× direct",
        _ratios_at_least(direct=0.6),
    ),
    RowSpec(
        "echo_p50",
        "echo",
        "keystroke echo round trip, p50",
        "µs",
        "p50_us",
        "≤ direct + 100 µs",
        _echo_p50,
    ),
    RowSpec(
        "echo_p99", "echo", "keystroke echo round trip, p99", "µs", "p99_us", "report", _report_only
    ),
    RowSpec(
        "idle_memory",
        "idle_memory",
        "memory per idle session (RSS delta / N)",
        "KiB",
        "kib_per_session",
        "≤ 20 KiB",
        _at_most(20.0),
    ),
    RowSpec(
        "sessions_held",
        "sessions",
        "sessions held with keepalive, verified",
        "sessions",
        "verified",
        "≥ N, 0 errors",
        _held,
    ),
    RowSpec(
        "sessions_open",
        "sessions",
        "time to open those sessions (slowest client process)",
        "s",
        "ramp_seconds",
        "≤ 10 s",
        _at_most(10.0),
    ),
    RowSpec(
        "sessions_rss",
        "sessions",
        "relay RSS with those sessions held",
        "MB",
        "rss_mb",
        "≤ 200 MB",
        _at_most(200.0),
    ),
    RowSpec(
        "setup_cpu",
        "setup",
        "gateway CPU per session set-up, 32 concurrent (smoke: 8)",
        "ms/session",
        "cpu_ms_per_session",
        "≤ 0.8 ms",
        _at_most(0.8),
    ),
    RowSpec(
        "setup_1_cpu",
        "setup_1",
        "gateway CPU per session set-up, 1 at a time",
        "ms/session",
        "cpu_ms_per_session",
        "≤ 0.8 ms",
        _at_most(0.8),
    ),
    RowSpec(
        "setup_1_p50",
        "setup_1",
        "set-up latency (connect → 101), 1 at a time, p50",
        "ms",
        "p50_ms",
        "report",
        _report_only,
    ),
    RowSpec(
        "setup_p50",
        "setup",
        "set-up latency (connect → 101), 32 concurrent, p50",
        "ms",
        "p50_ms",
        "≤ 20 ms",
        _at_most(20.0),
    ),
    RowSpec(
        "setup_p99",
        "setup",
        "set-up latency (connect → 101), 32 concurrent, p99",
        "ms",
        "p99_ms",
        "≤ 50 ms",
        _at_most(50.0),
    ),
    RowSpec(
        "setup_rate",
        "setup",
        "session set-ups per second, one worker, one client process",
        "sessions/s",
        "sessions_per_s",
        "≥ 1,200/s",
        _at_least(1200.0),
    ),
    RowSpec(
        "setup_workers",
        "setup_workers",
        "session set-ups per second, --workers 2 vs 1, clients in 2 processes",
        "sessions/s",
        "sessions_per_s",
        "report",
        _vs_one_worker(None),
        gateway="gateway_2w",
    ),
    RowSpec(
        "setup_tls_cpu",
        "setup_tls",
        "gateway CPU per session set-up, wss:// upstream, 32 concurrent",
        "ms/session",
        "cpu_ms_per_session",
        "≤ 1.2 ms",
        _at_most(1.2),
    ),
    RowSpec(
        "setup_tls_rate",
        "setup_tls",
        "session set-ups per second, wss:// upstream",
        "sessions/s",
        "sessions_per_s",
        "report",
        _report_only,
    ),
    RowSpec(
        "cpu_per_mb",
        "down_16k",
        "relay CPU per MB relayed, 16 KiB frames",
        "ms/MB",
        "cpu_ms_per_mb",
        "≤ 2.0 ms/MB",
        _at_most(2.0),
    ),
    RowSpec(
        "workers",
        "workers",
        "2 workers, 8 flooding sessions, aggregate",
        "MB/s",
        "mb_per_s",
        "≥ 1.6× 1 worker",
        _vs_one_worker(1.6),
        gateway="gateway_2w",
    ),
)


def build_rows(
    results: dict[str, RoundResults], skipped: dict[str, str], *, smoke: bool = False
) -> dict[str, dict[str, Any]]:
    """One row per ``ROWS`` entry whose figure ran (or was skipped as a whole)."""
    rows: dict[str, dict[str, Any]] = {}
    for spec in ROWS:
        base = {
            "figure": spec.figure,
            "title": spec.title,
            "unit": spec.unit,
            "target": spec.target,
        }
        if spec.figure in skipped:
            rows[spec.key] = {**base, "skipped": skipped[spec.figure], "met": None}
            continue
        if spec.figure not in results:
            continue
        rounds = results[spec.figure]
        per_round: list[dict[str, float | None]] = []
        for by_variant in rounds:
            values = {name: _num(res.get(spec.metric)) for name, res in by_variant.items()}
            values["gateway"] = values.get(spec.gateway)
            per_round.append(values)
        has_base = spec.gateway == "gateway"
        row: dict[str, Any] = {
            **base,
            "gateway": _median([r.get("gateway") for r in per_round]),
            "gateway_base": _median([r.get(BASE) for r in per_round]) if has_base else None,
            "ratio_vs_base": _median([_ratio(r.get("gateway"), r.get(BASE)) for r in per_round])
            if has_base
            else None,
            "direct": _median([r.get("direct") for r in per_round]),
            "nginx": _median([r.get("nginx") for r in per_round]),
            "ratio_vs_direct": _median(
                [_ratio(r.get("gateway"), r.get("direct")) for r in per_round]
            ),
            "ratio_vs_nginx": _median(
                [_ratio(r.get("gateway"), r.get("nginx")) for r in per_round]
            ),
            "per_round": per_round,
            "raw": [by_variant.get(spec.gateway, {}) for by_variant in rounds],
            "errors": [
                f"{name}: {res['error']}"
                for by_variant in rounds
                for name, res in by_variant.items()
                if "error" in res
            ],
        }
        met, measured = spec.check(row)
        row["met"] = met if row["gateway"] is not None else False
        row["measured"] = measured
        if smoke:
            row["note"] = "smoke run: tiny sizes, not a verdict"
        rows[spec.key] = row
    return rows


def format_table(rows: dict[str, dict[str, Any]], *, baseline: bool = False) -> str:
    """The Markdown table; ``baseline`` adds the ``base`` and ``vs base`` columns."""
    columns = ["figure", "unit", "gateway"]
    columns += ["base", "vs base"] if baseline else []
    columns += ["direct", "nginx", "ratio vs direct", "ratio vs nginx"]
    columns += ["target", "measured", "met?"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for key, row in rows.items():
        if "skipped" in row:
            cells = [key, row["unit"], *["–"] * (len(columns) - 5), row["target"]]
            cells += [f"skipped: {row['skipped']}", "–"]
        else:
            met = {True: "yes", False: "**no**", None: "–"}[row["met"]]
            cells = [key, row["unit"], fmt(row["gateway"])]
            if baseline:
                cells += [fmt(row["gateway_base"]), _x(row["ratio_vs_base"])]
            cells += [
                fmt(row["direct"]),
                fmt(row["nginx"]),
                _x(row["ratio_vs_direct"]),
                _x(row["ratio_vs_nginx"]),
                row["target"],
                row["measured"],
                met,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
