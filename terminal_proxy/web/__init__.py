"""The browser side of ``terminal-proxy demo``: files, no code.

``index.html`` (the demo page) and ``error.html`` (a bad or used login link) sit next to this
file; ``static/`` holds the bundle built from ``web/`` by ``scripts/build-web``
(``terminal-proxy.js``, ``terminal-proxy.css``). ``static/`` is git-ignored and absent until
that script has run.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["static_dir"]


def static_dir() -> Path:
    """The folder the built bundle is in (it may not exist before ``scripts/build-web``)."""
    return Path(__file__).resolve().parent / "static"
