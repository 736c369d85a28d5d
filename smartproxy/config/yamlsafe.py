"""Reading YAML text with a bound on what aliases may expand to.

YAML aliases share one node; a file of nine aliases per level, eight levels deep (about 1 KB)
describes 9**8 = 43 million nodes. PyYAML builds that as shared Python objects cheaply, but
everything that walks the document afterwards (``${VAR}`` expansion, validation, the admin
editor) visits every one of them: minutes of CPU and gigabytes of memory. So the composed node
graph is measured *before* anything is built from it: the nodes the document holds once every
alias is expanded may exceed the nodes written in the file by at most ``ALIAS_BUDGET``. A file
without aliases is never refused; an alias that refers to itself is. On the same walk a mapping
that names a key twice is refused (PyYAML would keep the last value without a word).
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
    Raises ``yaml.YAMLError`` for bad YAML, ``AliasBombError`` for too much expansion and
    ``TooDeepError`` past ``MAX_DEPTH`` levels."""
    check_depth(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node, budget)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class DuplicateKeyError(ValueError):
    """A mapping names one key twice (YAML loaders keep the last silently)."""


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: set[str] = set()
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value != "<<":
            if key.value in seen:
                line = key.start_mark.line + 1
                raise DuplicateKeyError(
                    f"line {line}: key {key.value!r} appears twice in one mapping (the first "
                    "value would be silently ignored)"
                )
            seen.add(key.value)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_expansion(root: yaml.Node, budget: int) -> int:
    """The expanded size of ``root``'s graph; ``AliasBombError`` past unique nodes + budget.

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
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node)
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]
