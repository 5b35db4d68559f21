"""Small helpers shared by the harness's child processes."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["raise_nofile", "run", "stop_event"]

T = TypeVar("T")


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one (20,000 here); return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """``asyncio.run``, on uvloop when it is importable (it is optional)."""
    if use_uvloop:
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            pass
        else:
            return uvloop.run(main)  # type: ignore[no-any-return,unused-ignore]
    return asyncio.run(main)


def uvloop_available() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM, SIGINT or the end of stdin (the harness went away)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            done.set()

    loop.add_reader(fd, readable)
    return done
