"""KeyedLocks: one lock per key, forgotten when nobody holds or waits for it."""

from __future__ import annotations

import asyncio

import pytest

from terminal_proxy.locks import KeyedLocks


async def _until_waiting(locks: KeyedLocks[str], key: str, users: int) -> None:
    """Yield to the loop until ``users`` hold or wait for ``key`` (no timed sleep)."""
    async with asyncio.timeout(5):
        while locks.users(key) < users:
            await asyncio.sleep(0)


async def test_one_key_is_serialised_and_forgotten_after() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("alice"):
            order.append("first in")
            first_in.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await first_in.wait()
        async with locks.hold("alice"):
            order.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await _until_waiting(locks, "alice", 2)  # the second task waits on the lock
    assert len(locks) == 1
    assert order == ["first in"]
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "first out", "second in"]
    assert len(locks) == 0


async def test_other_keys_do_not_wait() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    async with locks.hold("alice"):
        async with asyncio.timeout(5):
            async with locks.hold("bob"):
                assert len(locks) == 2
    assert len(locks) == 0


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    waiting = asyncio.Event()

    async def waiter() -> None:
        waiting.set()
        async with locks.hold("alice"):
            raise AssertionError("never holds it")  # pragma: no cover

    async with locks.hold("alice"):
        task = asyncio.create_task(waiter())
        await waiting.wait()
        await _until_waiting(locks, "alice", 2)  # the waiter is blocked on the lock
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert locks.users("alice") == 1  # only the holder
    assert len(locks) == 0


async def test_a_holder_that_raises_releases_and_is_forgotten() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("alice"):
            raise RuntimeError("provisioning failed")
    assert len(locks) == 0
    async with asyncio.timeout(5), locks.hold("alice"):
        assert locks.users("alice") == 1
