"""Capture every log line of a test run, and every secret the tests used.

``tests/conftest.py`` installs ``install()`` at start-up: a DEBUG handler on the root
logger writing ``test-output/full-run.log``. Fixtures register the secrets they create
(bearer tokens, cookies, JWTs seen by the fake API) with ``remember_secret``;
``tests/test_zz_no_secrets_in_logs.py`` runs last and checks that none of them appears
in the captured log, including what gateway subprocesses printed.
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
    _handler = logging.FileHandler(LOG_PATH, mode="w", encoding="utf-8")
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


def append_external_log(source: str, lines: Iterable[str]) -> None:
    if _handler is None:
        return
    with LOG_PATH.open("a", encoding="utf-8") as out:
        for line in lines:
            out.write(f"[{source}] {line}\n")


def remember_secret(value: str) -> None:
    if value:
        SECRETS.add(value)
