"""The table-driven reader: YAML nodes in, values out, problems collected on the way."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .parsers import _boolean, _describe, _duration, _fraction, _integer, _size
from .values import Problem

# --------------------------------------------------------------------------------------------
# The table-driven reader: YAML nodes in, values out, problems collected on the way.

_NULL_TAG: Final = "tag:yaml.org,2002:null"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
# Reader result meaning "a problem was reported; keep the default".
_INVALID: Final = object()


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"scalar {str(node.value)[:60]!r}"


def _line(node: Node | None) -> int | None:
    return None if node is None or node.start_mark is None else int(node.start_mark.line) + 1


def _problem_order(problem: Problem) -> tuple[bool, int]:
    return (problem.line is None, problem.line or 0)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


class _Reader:
    """Shared state of one load: where problems go and how scalars are built."""

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()

    def report(self, node: Node | None, key: str, message: str) -> None:
        self.problems.append(Problem(self.source, _line(node), key, message))

    def construct(self, node: Node, key: str) -> object:
        """The Python value of ``node`` as ``safe_load`` builds it, or ``_INVALID``."""
        if (
            isinstance(node, ScalarNode)
            and node.tag == _BOOL_TAG
            and str(node.value).lower() not in ("true", "false")
        ):
            self.report(
                node,
                key,
                f"write booleans as true or false (or quote the string), got {node.value!r}",
            )
            return _INVALID
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.report(node, key, f"invalid value: {problem}")
            return _INVALID

    def items(self, node: Node | None, key: str) -> list[tuple[str, Node, Node]] | None:
        """The ``(name, key node, value node)`` entries of a mapping; null counts as empty."""
        if node is None or _is_null(node):
            return []
        if not isinstance(node, MappingNode):
            self.report(node, key, f"expected a mapping, got {_node_kind(node)}")
            return None
        entries: list[tuple[str, Node, Node]] = []
        seen: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.report(key_node, key, "merge keys (<<) are not supported")
                continue
            name = self.construct(key_node, key)
            if not isinstance(name, str):
                if name is not _INVALID:
                    self.report(key_node, key, f"keys must be strings, got {_describe(name)}")
                continue
            if name in seen:
                first = _line(seen[name])
                self.report(
                    key_node, _join(key, name), f"duplicate key (first set on line {first})"
                )
                continue
            seen[name] = key_node
            entries.append((name, key_node, value_node))
        return entries


# A field reader: (reader, value node, key path) → value or _INVALID (problem reported).
_Field = Callable[[_Reader, Node, str], Any]


def _scalar(parse: Callable[[object], Any]) -> _Field:
    """Read one value with ``parse`` (a value parser above)."""

    def read(reader: _Reader, node: Node, key: str) -> Any:
        value = reader.construct(node, key)
        if value is _INVALID:
            return _INVALID
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            reader.report(node, key, str(exc))
            return _INVALID

    return read


def _list(parse: Callable[[object], Any], *, what: str) -> _Field:
    """Read a list whose items are each read with ``parse``; problems name ``key[i]``."""
    item_reader = _scalar(parse)

    def read(reader: _Reader, node: Node, key: str) -> Any:
        if not isinstance(node, SequenceNode):
            reader.report(node, key, f"expected a list of {what}, got {_node_kind(node)}")
            return _INVALID
        items = [item_reader(reader, item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    return read


_Finish = Callable[[_Reader, Any, Mapping[str, Node], str, Node | None], Any]


@dataclass(frozen=True, slots=True)
class _Section:
    """Read a mapping into ``cls``: ``fields`` maps each allowed key to its reader.

    ``finish(reader, value, value_nodes, key, node)`` runs after the fields, for checks that
    span several keys; it returns the final value.
    """

    cls: type[Any]
    fields: Mapping[str, _Field]
    finish: _Finish | None = None

    def __call__(self, reader: _Reader, node: Node | None, key: str) -> Any:
        entries = reader.items(node, key)
        if entries is None:
            return _INVALID
        values: dict[str, Any] = {}
        nodes: dict[str, Node] = {}
        for name, key_node, value_node in entries:
            path = _join(key, name)
            read = self.fields.get(name)
            if read is None:
                reader.report(key_node, path, _unknown_key(name, self.fields))
                continue
            nodes[name] = value_node
            value = read(reader, value_node, path)
            if value is not _INVALID:
                values[name] = value
        result = self.cls(**values)
        return result if self.finish is None else self.finish(reader, result, nodes, key, node)


def _unknown_key(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(known)})"


# Field readers shared by the tables.
_POSITIVE: Final = _scalar(_duration(zero=False))
_ZERO_DISABLES: Final = _scalar(_duration(zero=True))
_SIZE: Final = _scalar(_size)
_BOOLEAN: Final = _scalar(_boolean)
# Events per second; 0 disables.
_RATE: Final = _scalar(_fraction(maximum=10_000))


def _list_of(section: _Section, *, what: str) -> _Field:
    """A list of mappings, each read by ``section``."""

    def read(reader: _Reader, node: Node, key: str) -> Any:
        if not isinstance(node, SequenceNode):
            reader.report(node, key, f"expected a list of {what}, got {_node_kind(node)}")
            return _INVALID
        items = [section(reader, item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    return read


_COUNT: Final = _scalar(_integer(minimum=0))


def reads(read: _Field) -> dict[str, Any]:
    """A field's metadata naming the reader of its YAML key (``fields_of`` collects them),
    so a key is declared once: its field, default and reader together in ``model``."""
    return {"read": read}


def fields_of(cls: type[Any]) -> dict[str, _Field]:
    """The readers a section's dataclass names in its fields' metadata (``reads``)."""
    return {f.name: f.metadata["read"] for f in dataclasses.fields(cls)}
