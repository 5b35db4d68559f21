"""The package's import graph, read with ``ast`` (nothing is imported): no cycles, and the
interfaces never import their implementations."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import terminal_proxy

ROOT = Path(terminal_proxy.__file__).parent
PACKAGE = "terminal_proxy"


def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in ROOT.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (lazy ones too), but not those only for the
    type checker."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports_of(child))
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def _edges(name: str) -> set[str]:
    """The package's modules ``name`` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            if node.level:
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # ``from package import submodule`` imports the submodule.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        found.update(target for target in targets if target in MODULES)
    found.discard(name)
    return found


GRAPH = {name: _edges(name) for name in MODULES}


def _reaches(start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for target in GRAPH[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _cycles() -> list[list[str]]:
    """Each strongly connected set of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    return found


def test_the_graph_is_read() -> None:
    assert "terminal_proxy.kube.cluster" in GRAPH["terminal_proxy.authorization.build"]
    assert "terminal_proxy.authorization" in GRAPH["terminal_proxy.kube.identity"]


def test_no_import_cycle() -> None:
    assert _cycles() == []


def _under(prefix: str) -> set[str]:
    return {name for name in MODULES if name == prefix or name.startswith(prefix + ".")}


# The authorizers and what they are made of; only the app and the factory build them.
IMPLEMENTATIONS = (
    {
        f"{PACKAGE}.authorization.{name}"
        for name in ("build", "gitlab", "http", "kubernetes", "native", "observed", "static")
    }
    | _under(f"{PACKAGE}.authorization.provision")
    | _under(f"{PACKAGE}.kube")
)


def test_the_authorization_interface_never_reaches_an_implementation() -> None:
    for interface in (f"{PACKAGE}.authorization", f"{PACKAGE}.authorization.routing"):
        assert _reaches(interface) & IMPLEMENTATIONS == set(), interface


def test_the_kubernetes_client_layer_is_below_the_authorizers() -> None:
    authorizers = IMPLEMENTATIONS - _under(f"{PACKAGE}.kube")
    for module in _under(f"{PACKAGE}.kube"):
        assert _reaches(module) & authorizers == set(), module


def test_metrics_hold_no_authorizer() -> None:
    """The observed authorizer lives with the authorizers and imports the metrics, not the
    other way round."""
    metrics = f"{PACKAGE}.metrics"
    assert GRAPH[metrics] & _under(f"{PACKAGE}.authorization") == set()
    assert _reaches(metrics) & IMPLEMENTATIONS == set()


def test_observability_never_reaches_the_relay() -> None:
    """Metrics, audit and the session-fields schema use the stop table only."""
    relay = f"{PACKAGE}.session.relay"
    for module in ("metrics", "audit", "observability"):
        assert relay not in _reaches(f"{PACKAGE}.{module}"), module


def test_the_session_core_never_reaches_the_gateway_around_it() -> None:
    around = {f"{PACKAGE}.{name}" for name in ("gateway", "handshake", "registry", "app")}
    for module in _under(f"{PACKAGE}.session"):
        assert _reaches(module) & around == set(), module


def test_the_codec_interface_never_reaches_a_codec() -> None:
    codecs = {f"{PACKAGE}.protocols.{name}" for name in ("gitlab", "kubernetes", "terminal_proxy")}
    assert _reaches(f"{PACKAGE}.protocols.base") & codecs == set()


def test_the_handshake_never_reaches_the_cluster() -> None:
    """Redis stays behind registry.SharedCounts: the handshake, the registry, the gateway
    and the session core never import the cluster package (app.py does, lazily, only
    when cluster.redis_url is set)."""
    cluster = _under(f"{PACKAGE}.cluster")
    assert cluster, "the cluster package is read"
    modules = {f"{PACKAGE}.{name}" for name in ("handshake", "registry", "gateway", "resume")}
    for module in modules | _under(f"{PACKAGE}.session") | _under(f"{PACKAGE}.config"):
        assert _reaches(module) & cluster == set(), module


def test_single_replica_mode_never_imports_redis() -> None:
    """Without cluster.redis_url, building and importing the app loads no Redis code."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from terminal_proxy.app import build_app\n"
        "from terminal_proxy.cli import main\n"
        "from terminal_proxy.config import default_config\n"
        "build_app(default_config())\n"
        "loaded = sorted(m for m in sys.modules if m == 'redis' or m.startswith(('redis.', "
        "'terminal_proxy.cluster')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
