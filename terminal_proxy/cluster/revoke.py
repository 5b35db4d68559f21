"""Revocation pushed to every replica: a JSON message on the ``terminal-proxy:revoke``
channel (docs/cluster.md) names a user, a session or a route, and every replica closes
its matching sessions with 4001 and the message's reason. A web app can publish it with
its own Redis client; ``terminal-proxy revoke`` does it from the command line. While the
channel is lost, authorization polling stays the safety net.

    {"user": "alice", "reason": "account blocked"}
    {"session": "r1.Zk3…", "reason": "ended by an administrator"}
    {"route": "kubernetes-pods"}
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from redis.asyncio import Redis

from .keys import REVOKE_CHANNEL
from .redis import REDIS_ERRORS

__all__ = ["KINDS", "MAX_REASON", "Revocation", "listen", "parse", "publish"]

log = logging.getLogger("terminal_proxy.cluster")

Kind = Literal["user", "session", "route"]
KINDS: Final[tuple[Kind, ...]] = ("user", "session", "route")
# Longest reason kept (a close reason has 123 bytes, "authorization revoked: " included).
MAX_REASON = 96
# Seconds between two attempts to subscribe again after the channel was lost.
_RESUBSCRIBE = 1.0


@dataclass(frozen=True, slots=True)
class Revocation:
    kind: Kind
    value: str
    reason: str = ""

    def encode(self) -> str:
        body: dict[str, str] = {self.kind: self.value}
        if self.reason:
            body["reason"] = self.reason
        return json.dumps(body, separators=(",", ":"))


def parse(data: str | bytes) -> Revocation:
    """A channel message; ValueError (with why) for anything else."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    named = [kind for kind in KINDS if kind in body]
    if len(named) != 1:
        raise ValueError('needs exactly one of "user", "session" or "route"')
    kind = named[0]
    value = body[kind]
    if not isinstance(value, str) or not value:
        raise ValueError(f'"{kind}" must be a non-empty string')
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise ValueError('"reason" must be a string')
    unknown = set(body) - {kind, "reason"}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    return Revocation(kind, value, _clean(reason))


def _clean(reason: str) -> str:
    """One line, printable, at most MAX_REASON characters."""
    text = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    return text[:MAX_REASON]


async def publish(client: Redis, revocation: Revocation) -> int:
    """Publish ``revocation``; the number of replicas listening."""
    return await client.publish(REVOKE_CHANNEL, revocation.encode())


async def listen(
    client: Redis,
    apply: Callable[[Revocation], int],
    state: Callable[[bool, str], None],
) -> None:
    """Apply every revocation on the channel, subscribing again after each loss."""
    while True:
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(REVOKE_CHANNEL)
                state(True, "")
                while not _cancelling():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or message.get("type") != "message":
                        continue
                    _apply(message.get("data"), apply)
        except REDIS_ERRORS as exc:
            state(False, f"{type(exc).__name__}: {exc}")
        if _cancelling():
            # redis-py may swallow the cancellation of a read in progress.
            raise asyncio.CancelledError
        await asyncio.sleep(_RESUBSCRIBE)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _apply(data: object, apply: Callable[[Revocation], int]) -> None:
    if not isinstance(data, str | bytes):
        return
    try:
        revocation = parse(data)
    except ValueError as exc:
        log.warning("ignored a message on %s: %s", REVOKE_CHANNEL, exc)
        return
    apply(revocation)
