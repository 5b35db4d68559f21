"""``python -m terminal_proxy``: the same as the ``terminal-proxy`` command."""

from .cli import main

raise SystemExit(main())
