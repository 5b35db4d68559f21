"""Session recordings: asciicast v2 files plus a metadata JSON (docs/recording.md).

A ``Recorder`` belongs to one session. It writes ``<dir>/<session id>.cast`` (asciicast v2:
a header line, then one JSON array per event: ``[seconds, "o", text]`` for output,
``"i"`` for input when the policy records it, ``"r"`` for resizes (``"COLSxROWS"``),
``"m"`` for markers: detach, resume, lost output, extension, truncation) and, when the
session ends, ``<dir>/<session id>.json`` (user, target, times, exit code, bytes, stop
reason). Output is decoded as UTF-8 incrementally, one decoder per stream, so a
character split across frames is written whole.

Events are buffered and appended in batches (the file is opened for each batch), so a
spool directory that disappears or fills up is noticed at the next batch: ``write`` then
raises ``OSError`` and the session applies the policy (``required`` ends it,
``best_effort`` stops recording and emits an audit event). Each recording is capped at
``max_size`` bytes (a final marker says it was truncated); before a recording starts,
the oldest finished recordings are deleted until the spool fits ``spool_quota``.
"""

from __future__ import annotations

import codecs
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Recorder", "RecordingSettings"]

# Appended to the file when this much is buffered (and at the end).
FLUSH_AT = 64 * 1024
# Recordings being written by this process (never rotated away).
_ACTIVE: set[Path] = set()


@dataclass(frozen=True, slots=True)
class RecordingSettings:
    directory: Path
    max_size: int = 64 * 1024 * 1024
    spool_quota: int = 1024 * 1024 * 1024
    required: bool = False
    record_input: bool = False


class Recorder:
    """One session's recording (see the module docstring)."""

    def __init__(self, settings: RecordingSettings, session_id: str, meta: dict[str, Any]) -> None:
        self.settings = settings
        self.path = settings.directory / f"{session_id}.cast"
        self.meta_path = settings.directory / f"{session_id}.json"
        self.meta = dict(meta)
        self.started = time.time()
        self._t0 = time.monotonic()
        self._pending: list[str] = []
        self._pending_size = 0
        self.size = 0
        self.truncated = False
        self._decoders = {
            stream: codecs.getincrementaldecoder("utf-8")("replace") for stream in (1, 2, 0)
        }

    @classmethod
    def start(cls, settings: RecordingSettings, session_id: str, meta: dict[str, Any]) -> Recorder:
        """Make room in the spool, create the file and write the header (OSError on failure)."""
        settings.directory.mkdir(parents=True, exist_ok=True)
        rotate(settings.directory, settings.spool_quota - settings.max_size)
        recorder = cls(settings, session_id, meta)
        header = {
            "version": 2,
            "width": 80,
            "height": 24,
            "timestamp": int(recorder.started),
            "env": {"TERM": "xterm-256color"},
            "title": f"terminal-proxy session {session_id}",
        }
        line = json.dumps(header) + "\n"
        with recorder.path.open("x", encoding="utf-8") as out:
            out.write(line)
        recorder.size = len(line.encode())
        _ACTIVE.add(recorder.path)
        return recorder

    # Events --------------------------------------------------------------------------

    def output(self, data: bytes, stream: int = 1) -> None:
        text = self._decoders[2 if stream == 2 else 1].decode(data)
        if text:
            self._event("o", text)

    def input(self, data: bytes) -> None:
        if self.settings.record_input:
            text = self._decoders[0].decode(data)
            if text:
                self._event("i", text)

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def marker(self, label: str) -> None:
        self._event("m", label)

    def _event(self, code: str, text: str) -> None:
        if self.truncated:
            return
        line = json.dumps([round(time.monotonic() - self._t0, 6), code, text]) + "\n"
        size = len(line.encode())
        if self.size + self._pending_size + size > self.settings.max_size - 200:
            self.truncated = True
            line = json.dumps(
                [round(time.monotonic() - self._t0, 6), "m", "recording truncated (size cap)"]
            )
            self._pending.append(line + "\n")
            self._pending_size += len(line) + 1
            self.flush()
            return
        self._pending.append(line)
        self._pending_size += size
        if self._pending_size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Append what is buffered (OSError when the spool is gone or full)."""
        if not self._pending:
            return
        chunk = "".join(self._pending)
        self._pending, self._pending_size = [], 0
        with self.path.open("a", encoding="utf-8") as out:
            out.write(chunk)
        self.size += len(chunk.encode())

    def finish(self, end: dict[str, Any]) -> None:
        """Flush the rest and write the metadata JSON (OSError on failure)."""
        try:
            for stream in (1, 2):
                rest = self._decoders[stream].decode(b"", final=True)
                if rest:
                    self._event("o", rest)
            self.flush()
            doc = self.meta | end
            doc.update(
                started=_iso(self.started),
                ended=_iso(time.time()),
                recording=self.path.name,
                recording_bytes=self.size,
                truncated=self.truncated,
            )
            tmp = self.meta_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
            os.replace(tmp, self.meta_path)
        finally:
            _ACTIVE.discard(self.path)

    def abandon(self) -> None:
        """Stop without writing anything more (after a failure)."""
        self._pending = []
        _ACTIVE.discard(self.path)


def rotate(directory: Path, budget: int) -> None:
    """Delete the oldest finished recordings (cast + json) until the spool is ≤ budget."""
    entries: list[tuple[float, int, Path]] = []
    total = 0
    for path in directory.iterdir():
        if path.suffix not in (".cast", ".json") or not path.is_file():
            continue
        stat = path.stat()
        total += stat.st_size
        if path.suffix == ".cast" and path not in _ACTIVE:
            meta = path.with_suffix(".json")
            size = stat.st_size + (meta.stat().st_size if meta.exists() else 0)
            entries.append((stat.st_mtime, size, path))
    entries.sort()
    for _, size, path in entries:
        if total <= max(budget, 0):
            break
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        total -= size


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
