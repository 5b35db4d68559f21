"""Logging setup and the session log lines.

Library code only uses named loggers (``terminal_proxy.*``); ``setup_logging`` is called
by the CLI alone. Session lines carry structured fields (``extra={"fields": {...}}``):
rendered as ``key=value`` in text mode and as JSON objects in json mode. Nothing that
reaches a log line may hold a token, cookie or JWT: callers pass only vetted fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["fields_of", "setup_logging"]


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _kv(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = fields_of(record)
        if fields:
            line += " " + " ".join(f"{k}={_kv(v)}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(fields_of(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger for the command-line program (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print every request line including query strings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
