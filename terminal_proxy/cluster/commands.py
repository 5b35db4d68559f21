"""``terminal-proxy revoke`` and ``terminal-proxy sessions``: the operators' commands on
a cluster, talking to its Redis with the replicas' own config."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from ..config import ClusterConfig, ConfigError, load_config_file
from .redis import REDIS_ERRORS, connect
from .registry import ClusterSession, list_sessions
from .revoke import Revocation, publish

__all__ = ["run_command"]


def run_command(args: argparse.Namespace) -> int:
    try:
        config = load_config_file(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not config.cluster.enabled:
        print(f"{args.config}: cluster.redis_url is not set (no cluster)", file=sys.stderr)
        return 2
    try:
        if args.command == "revoke":
            return asyncio.run(_revoke(args, config.cluster))
        return asyncio.run(_sessions(args, config.cluster))
    except REDIS_ERRORS as exc:
        print(f"Redis {config.cluster.redis_url} unreachable: {exc}", file=sys.stderr)
        return 1


async def _revoke(args: argparse.Namespace, cluster: ClusterConfig) -> int:
    if args.user is not None:
        revocation = Revocation("user", args.user, args.reason)
    elif args.session is not None:
        revocation = Revocation("session", args.session, args.reason)
    else:
        revocation = Revocation("route", args.route, args.reason)
    client = connect(cluster, timeout=5.0)
    try:
        listeners = await publish(client, revocation)
    finally:
        await client.aclose()
    print(f"revocation of {revocation.kind} {revocation.value!r} sent to {listeners} replicas")
    if listeners == 0:
        print("warning: no replica is listening; polling will catch it", file=sys.stderr)
    return 0


async def _sessions(args: argparse.Namespace, cluster: ClusterConfig) -> int:
    client = connect(cluster, timeout=5.0)
    try:
        sessions = await list_sessions(client)
    finally:
        await client.aclose()
    if args.json:
        for session in sessions:
            print(json.dumps(session.as_json(), separators=(",", ":")))
        return 0
    print(_table(sessions, time.time()))
    return 0


def _table(sessions: list[ClusterSession], now: float) -> str:
    header = ("ID", "USER", "ROUTE", "REPLICA", "PHASE", "AGE", "PARTICIPANTS")
    rows = [header] + [
        (
            s.id,
            s.user,
            s.route,
            s.replica,
            s.phase,
            _age(now - s.started),
            str(s.participants),
        )
        for s in sessions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
