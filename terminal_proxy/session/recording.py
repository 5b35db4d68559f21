"""A session's recording and its failure policy, in one place (docs/recording.md).

``start_recording`` decides whether and how a session is recorded (``recording.routes``,
``recording.policy`` and ``recording.input``, each overridden by the authorization's own
``recording`` answer). A failure, at the start or later, is handled the same way: with
the ``required`` policy the session ends (4011 recording failed); with ``best_effort`` it
goes on unrecorded and an audit event says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..authorization import RecordingRequest
from ..config import RecordingConfig
from ..protocols import Event, Resize, Stdin
from ..recording import Recorder, RecordingSettings
from .stop import Stop, StopReason

__all__ = ["Audit", "RecordingTap", "start_recording", "wants_recording"]

log = logging.getLogger("terminal_proxy.session")

Audit = Callable[[str, dict[str, object]], None]


def wants_recording(config: RecordingConfig, route: str, wanted: RecordingRequest | None) -> bool:
    return wanted.enabled if wanted is not None else route in config.routes


class RecordingTap:
    """Feeds one session's traffic to its ``Recorder``; applies the policy on failure."""

    __slots__ = ("_audit", "_recorder", "_stop", "failure", "session_id")

    def __init__(
        self, recorder: Recorder, *, session_id: str, audit: Audit, stop: Callable[[Stop], None]
    ) -> None:
        self._recorder: Recorder | None = recorder
        self._audit = audit
        self._stop = stop
        self.session_id = session_id
        # Why recording stopped, when it failed.
        self.failure: str | None = None

    @property
    def name(self) -> str | None:
        return None if self._recorder is None else self._recorder.path.name

    def output(self, data: bytes, stream: int) -> None:
        if self._recorder is None:
            return
        try:
            self._recorder.output(data, stream)
        except OSError as exc:
            self._failed(exc)

    def browser(self, event: Event) -> None:
        if self._recorder is None:
            return
        try:
            if type(event) is Stdin:
                self._recorder.input(event.data)
            elif type(event) is Resize:
                self._recorder.resize(event.width, event.height)
        except OSError as exc:
            self._failed(exc)

    def marker(self, label: str) -> None:
        if self._recorder is None:
            return
        try:
            self._recorder.marker(label)
        except OSError as exc:
            self._failed(exc)

    def finish(self, end: dict[str, Any]) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        try:
            recorder.finish(end)
        except OSError as exc:
            self._failed(exc)
        self._recorder = None

    def _failed(self, exc: OSError) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        recorder.abandon()
        self.failure = _describe(exc)
        _apply_policy(
            recorder.settings.required,
            self.failure,
            {"session": self.session_id, "recording": recorder.path.name},
            self._audit,
            self._stop,
        )


def start_recording(
    config: RecordingConfig,
    wanted: RecordingRequest | None,
    *,
    session_id: str,
    meta: dict[str, object],
    audit: Audit,
    stop: Callable[[Stop], None],
) -> RecordingTap | None:
    """Start recording a session; None when it could not start (the policy applied)."""
    required = config.policy == "required"
    record_input = config.input
    if wanted is not None:
        required = required if wanted.required is None else wanted.required
        record_input = record_input if wanted.input is None else wanted.input
    try:
        if config.dir is None:
            raise FileNotFoundError(0, "recording.dir is not set")
        settings = RecordingSettings(
            Path(config.dir),
            max_size=config.max_size,
            spool_quota=config.spool_quota,
            required=required,
            record_input=record_input,
        )
        recorder = Recorder.start(settings, session_id, dict(meta))
    except OSError as exc:
        _apply_policy(required, _describe(exc), {"session": session_id}, audit, stop, started=False)
        return None
    return RecordingTap(recorder, session_id=session_id, audit=audit, stop=stop)


def _describe(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def _apply_policy(
    required: bool,
    error: str,
    fields: dict[str, object],
    audit: Audit,
    stop: Callable[[Stop], None],
    *,
    started: bool = True,
) -> None:
    """``required``: the session ends (4011); ``best_effort``: recording stops, audited."""
    message = "recording failed" if started else "recording could not start"
    log.warning(message, extra={"fields": fields | {"error": error}})
    if required:
        stop(Stop(StopReason.RECORDING_FAILED, error))
    else:
        audit("recording_failed", fields | {"error": error})
