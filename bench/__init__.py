"""Performance harness for terminal-proxy: ``python -m bench`` (see docs/performance.md)."""
