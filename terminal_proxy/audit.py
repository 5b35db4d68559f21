"""The audit trail: one JSON line per session open and per session end.

Separate from the debug/info logs (its own stream, its own format, no log levels), so it
can be shipped and kept on its own terms. Each line is a JSON object:

    {"time": "2026-01-02T03:04:05.678Z", "event": "session_open", "session": "…",
     "user": "alice", "client": "203.0.113.9", "upstream": "kube.example.com:443", …}

The fields are the ones the ``session opened`` / ``session ended`` log lines carry (see
docs/operations.md for the list). They are built from vetted values only: never a
header, cookie, token or URL query.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from .config import AuditConfig

__all__ = ["AuditLog"]


class AuditLog:
    """Writes audit events to a file (append) or standard error; off when not enabled."""

    def __init__(self, config: AuditConfig) -> None:
        self.enabled = config.enabled
        self._path = config.file
        self._stream: TextIO | None = None

    def open(self) -> None:
        """Open the file (or take stderr); raises OSError if the file cannot be opened."""
        if not self.enabled:
            return
        if self._path is None:
            self._stream = sys.stderr
        else:
            self._stream = open(self._path, "a", encoding="utf-8")  # noqa: SIM115

    def reopen(self) -> None:
        """Close and open the file again (after logrotate moved it: SIGHUP)."""
        if self._path is None or not self.enabled:
            return
        new = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        old, self._stream = self._stream, new
        if old is not None:
            old.close()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream is not sys.stderr:
            stream.close()

    def emit(self, event: str, fields: Mapping[str, object]) -> None:
        """Write one event; ``fields`` must hold only vetted, secret-free values."""
        if self._stream is None:
            return
        now = time.time()
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1000):03d}Z",
            "event": event,
        }
        doc.update(fields)
        self._stream.write(json.dumps(doc, default=str) + "\n")
        self._stream.flush()
