"""Logging setup and the session log lines.

Library code only uses named loggers (``terminal_proxy.*``); ``setup_logging`` is called
by the CLI alone. Session lines carry structured fields (``extra={"fields": {...}}``):
rendered as ``key=value`` in text mode and as JSON objects in json mode. Nothing that
reaches a log line may hold a token, cookie or JWT: callers pass only vetted fields.

Logged values may come from a client (a ``?resume=`` id, a header): control characters
(CR, LF, ESC, TAB, DEL, C1, line separators, bidi overrides) are escaped in both
formats, so a value can neither forge a line nor drive the terminal that shows the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

__all__ = ["escape_controls", "fields_of", "setup_logging"]

# C0 and C1 controls, DEL, Unicode line/paragraph separators and bidi embedding controls.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as ``\\xNN`` / ``\\uNNNN``."""
    return _CONTROLS.sub(_escaped, text)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _kv(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or _CONTROLS.search(text):
        # json.dumps escapes every character outside printable ASCII.
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

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
        # ensure_ascii: every character outside printable ASCII is escaped.
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
