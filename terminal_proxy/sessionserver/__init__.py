"""A GitLab-Runner-style session server: one-time ``wss://`` terminal URLs over a PTY.

For exec-style backends that are not Kubernetes, and the backend of ``terminal-proxy
demo``. Modules, in data-flow order:

* ``certs``   — a fresh self-signed certificate per start (its PEM is the gateway's CAPem);
* ``server``  — ``SessionServer``: tickets, the ``/session/<id>/exec`` checks, lifecycle;
* ``session`` — the relay of one attached terminal (``channel.k8s.io`` codecs, SERVER role);
* ``pty``     — the process on a pseudo-terminal, read and written through the event loop.

See docs/session-server.md.
"""

from .server import SUBPROTOCOLS, SessionLimitError, SessionServer, Ticket
from .session import Outcome, Phase, SessionState

__all__ = [
    "SUBPROTOCOLS",
    "Outcome",
    "Phase",
    "SessionLimitError",
    "SessionServer",
    "SessionState",
    "Ticket",
]
