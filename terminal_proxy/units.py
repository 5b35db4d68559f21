"""Durations and sizes as people write them in config files.

=====================  ===================  =========================================
written                parsed               notes
=====================  ===================  =========================================
``30`` / ``1.5``       30.0 / 1.5 seconds   a plain number is seconds
``500ms`` ``30s``      0.5 / 30.0           units: ``ms``, ``s``, ``m``, ``h``
``5m`` ``1h30m``       300.0 / 5400.0       parts in descending order, each unit once
``0`` / ``0s``         0.0                  callers decide whether 0 means "disabled"
``512`` ``64KiB``      512 / 65536 bytes    ``KiB``/``MiB``/``GiB`` are 1024-based
``10KB`` ``1MB``       10000 / 1000000      ``KB``/``MB``/``GB`` are 1000-based
=====================  ===================  =========================================

Both parsers raise ``ValueError`` for text they cannot read and ``TypeError`` for values of
the wrong type (``bool`` is never a number here). Messages quote the value and say what to
write instead; they are meant to be shown to the operator as they are.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "MAX_DURATION",
    "GiB",
    "KiB",
    "MiB",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Longest duration accepted: one year. Longer values are almost certainly a typo, and
# event-loop timers overflow long before float seconds do.
MAX_DURATION = 365 * 24 * 3600.0

_DURATION_HINT = "use e.g. 500ms, 30s, 5m, 1h"
_SIZE_HINT = "use e.g. 512, 64KiB, 1MiB, 1GiB"

_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|h|m|s)\s*")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_ORDER = ("h", "m", "s", "ms")

_SIZE = re.compile(r"([0-9]+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": KiB,
    "MiB": MiB,
    "GiB": GiB,
}


def parse_duration(value: str | int | float) -> float:
    """Return ``value`` as float seconds (``"1h30m"`` → 5400.0, ``45`` → 45.0)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"expected a duration ({_DURATION_HINT}), got {type(value).__name__}")
    if isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"invalid duration {value!r} ({_DURATION_HINT})")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    if seconds > MAX_DURATION:
        raise ValueError(
            f"duration {value!r} is too long (at most {format_duration(MAX_DURATION)})"
        )
    return seconds


def _parse_duration_text(text: str) -> float:
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped):
        return float(stripped)
    bad = ValueError(f"invalid duration {text!r} ({_DURATION_HINT})")
    total = 0.0
    pos = 0
    last_rank = -1
    while pos < len(stripped):
        match = _DURATION_PART.match(stripped, pos)
        if match is None:
            raise bad
        number, unit = match.groups()
        rank = _UNIT_ORDER.index(unit)
        if rank <= last_rank:  # "30s5m", "1h1h": out of order or repeated
            raise bad
        last_rank = rank
        total += float(number) * _DURATION_UNITS[unit]
        pos = match.end()
    if pos == 0:  # empty string
        raise bad
    return total


def parse_size(value: str | int) -> int:
    """Return ``value`` as int bytes (``"64KiB"`` → 65536, ``"1MB"`` → 1000000)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"expected a size ({_SIZE_HINT}), got {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value!r} is negative")
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"invalid size {value!r} ({_SIZE_HINT}; KB, MB and GB are 1000-based)")
    number, unit = match.groups()
    return int(number) * _SIZE_UNITS[unit]


def format_duration(seconds: float) -> str:
    """Return the shortest exact spelling of ``seconds`` that ``parse_duration`` reads back."""
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6 or millis < 1:
        return repr(float(seconds))
    parts = []
    for unit in _UNIT_ORDER:
        unit_ms = round(_DURATION_UNITS[unit] * 1000)
        count, millis = divmod(millis, unit_ms)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_size(size: int) -> str:
    """Return ``size`` with the largest binary unit that divides it (``65536`` → ``64KiB``)."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
