"""Runs last (file name): the whole run's captured log holds no token, cookie or JWT."""

from __future__ import annotations

from tests.logcapture import LOG_PATH, SECRETS


def test_captured_log_has_no_secret() -> None:
    """No bearer token, session id, cookie, secret or JWT used by any test was logged."""
    text = LOG_PATH.read_text(encoding="utf-8", errors="replace")
    assert "session opened" in text or len(SECRETS) == 0
    leaked = sorted(s for s in SECRETS if s in text)
    assert leaked == [], f"secrets found in {LOG_PATH}: {[s[:6] + '…' for s in leaked]}"
