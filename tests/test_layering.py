"""The package's shape: no import cycle, and the layers named in docs/architecture.md.

Read from the source with ``ast`` (every import statement counts, also one inside a
function or under ``TYPE_CHECKING``), so a cycle cannot hide in a lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "terminal_proxy"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    root = base[: len(base) - node.level + 1]
                    stem = ".".join([*root, node.module] if node.module else root)
                else:
                    stem = node.module or ""
                targets = [stem, *(f"{stem}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle() -> None:
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize(
    ("module", "never"),
    [
        # Interfaces never import their implementations.
        ("terminal_proxy.authorization", "terminal_proxy.authorization."),
        ("terminal_proxy.protocols.base", "terminal_proxy.protocols.gitlab"),
        ("terminal_proxy.protocols.base", "terminal_proxy.protocols.kubernetes"),
        ("terminal_proxy.protocols.base", "terminal_proxy.protocols.terminal_proxy"),
        # Observability (metrics, audit, the fields schema) never imports the relay.
        ("terminal_proxy.metrics", "terminal_proxy.session.relay"),
        ("terminal_proxy.audit", "terminal_proxy.session.relay"),
        ("terminal_proxy.observability", "terminal_proxy.session.relay"),
        # The session core knows nothing of aiohttp's server or the gateway around it.
        ("terminal_proxy.session.relay", "terminal_proxy.gateway"),
        ("terminal_proxy.session.relay", "terminal_proxy.handshake"),
        ("terminal_proxy.session.links", "terminal_proxy.registry"),
    ],
)
def test_layers(module: str, never: str) -> None:
    imported = _graph()[module]
    assert not [m for m in imported if m.startswith(never) and m != module]
