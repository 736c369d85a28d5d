"""Editing a config document in place, plain or round-trip (ruamel ``CommentedMap``/``Seq``).

Entries are appended, updated and deleted so that untouched keys keep their text and comments, and
the comment lines at the end of a block stay at its end. Used by ``kind.Kind`` and ``kinds``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ruamel.yaml.comments import CommentedMap

Node = Callable[[Any], Any]  # makes a document value from a plain one (identity, or round-trip)


def _comments() -> Any:
    """ruamel.yaml's ``comments`` module if it is loaded, else None. A round-trip document exists
    only once ``config.file`` has loaded it; a plain one is edited without importing ruamel."""
    return sys.modules.get("ruamel.yaml.comments")


def _is_rt(doc: Any) -> bool:
    rt = _comments()
    return rt is not None and isinstance(doc, rt.CommentedMap)


def _new_map(doc: Any, entry: dict[str, Any], node: Node) -> Any:
    if _is_rt(doc):
        return _comments().CommentedMap((k, node(v)) for k, v in entry.items())  # block style
    return dict(entry)


def _empty_map(doc: Any) -> Any:
    return _comments().CommentedMap() if _is_rt(doc) else {}


def _empty_seq(doc: Any) -> Any:
    return _comments().CommentedSeq() if _is_rt(doc) else []


# Round-trip documents: the comment lines after the last entry of a block (often a commented-out
# sample, then a blank line) belong to that entry's last scalar. When an entry is appended or the
# last one deleted, they move along so that they stay at the end of the block.
Holder = tuple["CommentedMap", Any]


def _trailing(node: Any, *, before_last: bool = False) -> Holder | None:
    """The (mapping, key) whose scalar value ends ``node``'s text, or None."""
    rt = _comments()
    if rt is None:  # a plain document: no comments to carry
        return None
    CommentedMap, CommentedSeq = rt.CommentedMap, rt.CommentedSeq  # noqa: N806
    if isinstance(node, CommentedSeq):
        return _trailing(node[-2 if before_last else -1]) if len(node) > before_last else None
    if not isinstance(node, CommentedMap) or len(node) <= before_last:
        return None
    key = list(node)[-2 if before_last else -1]
    value = node[key]
    if isinstance(value, CommentedMap) and not value.fa.flow_style():
        return _trailing(value)
    return None if isinstance(value, CommentedSeq) and not value.fa.flow_style() else (node, key)


def _carry_comment(src: Holder | None, dst: Holder | None) -> None:
    """Move the comment lines after ``src`` (not its end-of-line comment) to after ``dst``."""
    if src is None or dst is None or src == dst:
        return
    from ruamel.yaml.tokens import CommentToken  # loaded: ``src`` is round-trip

    entry = src[0].ca.items.get(src[1])
    token = entry[2] if entry and len(entry) > 2 else None
    if not isinstance(token, CommentToken):
        return
    head, _, tail = token.value.partition("\n")
    if head.strip():  # "# eol comment\n\n  # block\n": the end-of-line part stays
        token.value = head + "\n"
        moved = "\n" + tail
    else:
        entry[2] = None
        moved = token.value
    if moved.strip():
        dst[0].ca.items.setdefault(dst[1], [None, None, None, None])[2] = CommentToken(
            moved, token.start_mark, None
        )


def _append(items: list[Any], entry: Any) -> None:
    before = _trailing(items) if items else None
    items.append(entry)
    _carry_comment(before, _trailing(items))


def _delete(items: list[Any], i: int) -> None:
    if i == len(items) - 1 and i > 0:
        _carry_comment(_trailing(items), _trailing(items, before_last=True))
    del items[i]


def _update(stored: Any, merged: dict[str, Any], changed: frozenset[str], node: Node) -> None:
    """Edit a stored mapping in place: untouched keys keep their text and comments."""
    for k in [k for k in stored if str(k) not in merged]:
        del stored[k]
    for k, v in merged.items():
        if k in changed or k not in stored:
            stored[k] = node(v)
