"""Capture every log line of a test run, and every secret the tests used.

``tests/conftest.py`` installs ``install()`` at start-up: a DEBUG handler on the root
logger writing ``test-output/full-run.log``. Fixtures register the secrets they create
(bearer tokens, cookies, JWTs seen by the fake API) with ``remember_secret``;
``leaked_secrets()`` says which of them appear in the captured log, including what gateway
subprocesses printed; ``tests/conftest.py`` checks it when the session finishes, however
the tests were selected or ordered, and fails the run on a leak.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

LOG_PATH = Path(os.environ.get("TERMINAL_PROXY_TEST_OUTPUT", "test-output")) / "full-run.log"
SECRETS: set[str] = set()
_handler: logging.Handler | None = None


def install() -> None:
    global _handler
    LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
    LOG_PATH.write_text("", encoding="utf-8")
    # Append mode (O_APPEND): lines that append_external_log writes are never
    # overwritten by the handler's own later writes.
    _handler = logging.FileHandler(LOG_PATH, mode="a", encoding="utf-8")
    _handler.setLevel(logging.DEBUG)
    _handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s %(fields)s", defaults={"fields": ""}
        )
    )
    root = logging.getLogger()
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("terminal_proxy").setLevel(logging.DEBUG)


def leaked_secrets() -> list[str]:
    """The remembered secrets found in the captured log (empty: nothing leaked)."""
    if _handler is not None:
        _handler.flush()
    text = LOG_PATH.read_text(encoding="utf-8", errors="replace")
    return sorted(s for s in SECRETS if s in text)


def append_external_log(source: str, lines: Iterable[str]) -> None:
    if _handler is None:
        return
    with LOG_PATH.open("a", encoding="utf-8") as out:
        for line in lines:
            out.write(f"[{source}] {line}\n")


def remember_secret(value: str) -> None:
    if value:
        SECRETS.add(value)
