"""Reading YAML text with a bound on what aliases may expand to.

YAML aliases share one node; a file of nine aliases per level, eight levels deep (about 1 KB)
describes 9**8 = 43 million nodes. PyYAML builds that as shared Python objects cheaply, but
everything that walks the document afterwards (``${VAR}`` expansion, validation, the admin
editor) visits every one of them: minutes of CPU and gigabytes of memory. So the composed node
graph is measured *before* anything is built from it: the nodes the document holds once every
alias is expanded may exceed the nodes written in the file by at most ``ALIAS_BUDGET``. A file
without aliases is never refused; an alias that refers to itself is. On the same walk mappings
that name a key twice are found (PyYAML would keep the last value without a word): the document
is still built (the last value wins, as YAML loaders read it) so that its other problems can be
listed too, and ``DuplicateKeyError`` carries it with one problem per key named twice.
"""

from __future__ import annotations

from typing import Any

import yaml

ALIAS_BUDGET = 10_000

MAX_DEPTH = 200  # nesting levels; a config needs about six

try:  # libyaml when present (the composer and constructor in C), else the pure-Python loader
    _Loader: type[Any] = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - wheels ship libyaml
    _Loader = yaml.SafeLoader


class AliasBombError(ValueError):
    """The document expands past the budget, or an alias refers to itself."""


class TooDeepError(ValueError):
    """The document nests deeper than ``MAX_DEPTH``."""


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """Refuse nesting past ``limit`` from the parser's event stream (libyaml's parser keeps an
    explicit stack; its composer recurses in C, and tens of thousands of levels crash the
    process with SIGSEGV instead of raising, so depth is checked before composing)."""
    depth = 0
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > limit:
                    raise TooDeepError(f"YAML nested more than {limit} levels deep; refused")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    finally:
        loader.dispose()


def load(text: str, *, budget: int = ALIAS_BUDGET) -> Any:
    """``yaml.safe_load(text)``, refusing documents whose aliases expand past ``budget`` nodes.
    Raises ``yaml.YAMLError`` for bad YAML, ``AliasBombError`` for too much expansion,
    ``TooDeepError`` past ``MAX_DEPTH`` levels and ``DuplicateKeyError`` (with the document)
    when a mapping names a key twice."""
    check_depth(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        doubled: list[yaml.MappingNode] = []
        check_expansion(node, budget, doubled)
        document = loader.construct_document(node)
    finally:
        loader.dispose()
    if doubled:
        raise DuplicateKeyError(duplicate_keys(node, doubled), document)
    return document


class DuplicateKeyError(ValueError):
    """Mappings name a key twice (YAML loaders keep the last value silently). ``problems``: one
    ``path: key appears twice (lines A and B)`` per such key, in file order; ``document``: the
    document as loaders read it (the last value wins), whose other problems can be listed too."""

    def __init__(self, problems: list[str], document: Any) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.document = document


def _keys(node: yaml.MappingNode) -> list[tuple[str, yaml.Node]]:
    """The scalar keys of a mapping with their nodes (merge keys ``<<`` left out)."""
    return [(k.value, k) for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"]


def _has_duplicate_keys(node: yaml.MappingNode) -> bool:
    keys = _keys(node)
    return len({key for key, _ in keys}) != len(keys)


def duplicate_keys(root: yaml.Node, doubled: list[yaml.MappingNode]) -> list[str]:
    """``path: key appears twice (lines A and B)`` for each key named more than once in the
    ``doubled`` mappings, in file order; paths are 0-based (``channels[0].priority``). Only
    called for a document that has some: a second walk, in document order, for the paths."""
    wanted = {id(node) for node in doubled}
    found: list[tuple[int, int, str]] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # an alias: reported where its anchor is
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((c, f"{path}[{i}]") for i, c in reversed(list(enumerate(node.value))))
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        if id(node) in wanted:
            found += _doubled_keys(node, path)
        children = [(v, f"{path}.{k.value}" if path else str(k.value)) for k, v in node.value
                    if isinstance(k, yaml.ScalarNode)]
        stack.extend(reversed(children))
    return [problem for *_, problem in sorted(found)]


def _doubled_keys(node: yaml.MappingNode, path: str) -> list[tuple[int, int, str]]:
    lines: dict[str, list[yaml.Node]] = {}
    for key, key_node in _keys(node):
        lines.setdefault(key, []).append(key_node)
    found = []
    for key, nodes in lines.items():
        if len(nodes) > 1:
            numbers = [str(n.start_mark.line + 1) for n in nodes]
            times = "twice" if len(nodes) == 2 else f"{len(nodes)} times"
            where = f"{path}.{key}" if path else key
            last = nodes[1].start_mark  # where it appears again
            found.append((last.line, last.column, f"{where}: key appears {times} (lines "
                          f"{', '.join(numbers[:-1])} and {numbers[-1]})"))
    return found


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_expansion(
    root: yaml.Node, budget: int, doubled: list[yaml.MappingNode] | None = None
) -> int:
    """The expanded size of ``root``'s graph; ``AliasBombError`` past unique nodes + budget.
    Mappings that name a key twice are added to ``doubled``.

    Iterative (a deeply nested file must not exhaust the stack) and memoised per node, so the
    cost is linear in the nodes written, not in what they expand to."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            size[key] = total
            if total - len(size) > budget:
                raise AliasBombError(
                    f"YAML aliases expand to more than {budget:,} nodes beyond the file's own "
                    "(an alias bomb?); refused without expanding it"
                )
            continue
        if key in size:
            continue
        if key in open_:
            raise AliasBombError("a YAML alias refers to the node that contains it; refused")
        if isinstance(node, yaml.MappingNode) and doubled is not None:
            if _has_duplicate_keys(node):
                doubled.append(node)
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]
