"""What the admin API edits — channels, rules, API keys — and how each is found, merged and shown.

A ``Kind`` knows where its entries live in a config *document* (the parsed YAML, plain or
round-trip: both are dicts and lists), how a posted entry merges with the stored one, and how a
config object is shown: as the same keys the file uses, so that ``GET`` -> edit -> ``POST`` works,
with secrets masked. Merge rules (``POST`` replaces the whole entry, by name):

- a field left out is removed, unless its stored value is what the loader uses anyway (a
  default such as ``models: []``); the secret (``api_key``, ``key``): left out, ``null`` or
  sent back in its masked form (as ``GET`` shows it) it keeps the stored value; ``headers`` values
  sent back masked keep theirs too;
- a field whose value is unchanged (compared as the loader reads it, after ``${VAR}`` expansion)
  keeps its stored text, so ``${VAR}`` references survive.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.tokens import CommentToken

from ..errors import ConfigError
from . import (
    ApiKeyConfig,
    ChannelConfig,
    Config,
    RuleConfig,
    TimeWindow,
    expand_env,
    parse_api_key,
    parse_channel,
    parse_rule,
)
from .file import key_node
from .model import mask_secret

Node = Callable[[Any], Any]  # makes a document value from a plain one (identity, or round-trip)
_MASKED = re.compile(r"(?:[A-Za-z]{1,2}-|sha256:)?\.\.\.[^.]{0,4}|\*{4}")


def mask_key(key: str) -> str:
    """A gateway key as shown: ``sk-...abcd``, hashed ones ``sha256:...abcd``."""
    return f"sha256:...{key[-4:]}" if key.startswith("sha256:") else mask_secret(key)


def mask_url(url: str) -> str:
    """A URL with its password hidden: ``http://user:****@proxy:3128``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:****@{host}"))


def _plain(value: Any) -> Any:
    if isinstance(value, TimeWindow):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _is_rt(doc: Any) -> bool:
    return isinstance(doc, CommentedMap)


class Kind:
    """Entries kept as a list of mappings with ``name`` under one top-level key."""

    secret: str | None = None
    secret_maps: tuple[str, ...] = ()
    secret_urls: tuple[str, ...] = ()  # URLs whose password is masked (``proxy``)

    def __init__(self, name: str, section: str, always: tuple[str, ...]) -> None:
        self.name = name  # "channel"
        self.section = section  # "channels": the top-level key and the route
        self.always = always  # shown even when empty or default

    # -- config objects
    def items(self, config: Config) -> Sequence[Any]:
        return tuple(getattr(config, self.section))

    def get(self, config: Config, name: str) -> Any:
        return next((o for o in self.items(config) if o.name == name), None)

    def users(self, config: Config, name: str) -> list[str]:
        return []

    def parse(self, entry: dict[str, Any]) -> Any:
        raise NotImplementedError

    def mask(self, value: str) -> str:
        return mask_secret(value)

    def view(self, obj: Any, *, masked: bool = True) -> dict[str, Any]:
        """The entry with every field and the value in effect (defaults included: ``status:
        active``, ``models: []``; ``null`` where the server-wide setting applies), secrets masked.
        The keys are the file's, so ``GET`` -> edit -> ``POST`` works."""
        out: dict[str, Any] = {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if masked:
            if self.secret and out.get(self.secret):
                out[self.secret] = self.mask(out[self.secret])
            for m in self.secret_maps:
                if m in out:
                    out[m] = {k: mask_secret(str(v)) for k, v in out[m].items()}
            for u in self.secret_urls:
                if out.get(u):
                    out[u] = mask_url(out[u])
        return out

    def diff(self, old: Any, new: Any) -> dict[str, dict[str, Any]]:
        """Changed fields ``{field: {"old", "new"}}`` of two config objects, secrets masked."""
        before = self.view(old, masked=False) if old is not None else {}
        after = self.view(new, masked=False) if new is not None else {}
        shown_old = self.view(old) if old is not None else {}
        shown_new = self.view(new) if new is not None else {}
        return {
            k: {"old": shown_old.get(k), "new": shown_new.get(k)}
            for k in list(before) + [k for k in after if k not in before]
            if before.get(k) != after.get(k)
        }

    # -- documents
    def _list(self, doc: Any, *, create: bool) -> list[Any] | None:
        items = doc.get(self.section) if isinstance(doc, dict) else None
        if not isinstance(items, list):
            if not create:
                return None
            items = doc[self.section] = CommentedSeq() if _is_rt(doc) else []
        return items

    def _index(self, items: list[Any], name: str) -> int | None:
        for i, item in enumerate(items):
            if isinstance(item, dict) and str(item.get("name")) == name:
                return i
        return None

    def find(self, doc: Any, name: str) -> dict[str, Any] | None:
        """The stored entry (raw values, ``name`` included), or None."""
        items = self._list(doc, create=False)
        i = None if items is None else self._index(items, name)
        return None if items is None or i is None else dict(items[i])

    def put(self, doc: Any, name: str, merged: dict[str, Any], changed: frozenset[str],
            created: bool, *, node: Node) -> None:
        items = self._list(doc, create=True)
        assert items is not None
        i = None if created else self._index(items, name)
        if i is None:
            _append(items, _new_map(doc, merged, node))
        else:
            _update(items[i], merged, changed, node)

    def drop(self, doc: Any, name: str) -> None:
        items = self._list(doc, create=False)
        i = None if items is None else self._index(items, name)
        if items is not None and i is not None:
            _delete(items, i)

    # -- merging
    def merge(
        self, old: dict[str, Any] | None, posted: dict[str, Any]
    ) -> tuple[dict[str, Any], frozenset[str]]:
        """The entry to store and the fields that get new text (see the module docstring)."""
        new = {k: v for k, v in posted.items() if v is not None}
        if old is None:
            self._refuse_masked(new, None)
            return new, frozenset(new)
        if self.secret and self.secret in old:
            sent = posted.get(self.secret)
            if sent is None or sent == self.mask(str(expand_env(old[self.secret]))):
                new[self.secret] = old[self.secret]
        for u in self.secret_urls:
            if u in old and new.get(u) is not None and new[u] == mask_url(str(expand_env(old[u]))):
                new[u] = old[u]
        for m in self.secret_maps:
            stored, sent = old.get(m), new.get(m)
            if isinstance(stored, dict) and isinstance(sent, dict):
                new[m] = {
                    k: stored[k]
                    if k in stored and v == mask_secret(str(expand_env(stored[k])))
                    else v
                    for k, v in sent.items()
                }
        self._refuse_masked(new, old)
        old_cfg, new_cfg = self.parse(expand_env(old)), self.parse(expand_env(new))
        merged: dict[str, Any] = {}
        for k, v in new.items():
            same = k in old and (
                old[k] == v
                or (old_cfg is not None and new_cfg is not None and hasattr(old_cfg, k)
                    and getattr(old_cfg, k) == getattr(new_cfg, k))
                or expand_env(old[k]) == v
            )
            merged[k] = old[k] if same else v
        for k in set(old) - set(merged):  # left out, but the new entry has that value anyway
            if (old_cfg is not None and new_cfg is not None and hasattr(old_cfg, k)
                    and getattr(old_cfg, k) == getattr(new_cfg, k)):
                merged[k] = old[k]
        merged = self._without_defaults(merged, set(old))
        changed = {k for k in merged if k not in old or merged[k] is not old[k]}
        return merged, frozenset(changed | (set(old) - set(merged)))


    def _without_defaults(self, entry: dict[str, Any], stored: set[str]) -> dict[str, Any]:
        """Drop the fields (not in the file before) whose value is the default anyway: a ``GET``
        shows every field, and posting it back must not fill the file with defaults."""
        cfg = self.parse(expand_env(entry))
        if cfg is None:
            return entry
        defaults = {f.name: _default(f) for f in dataclasses.fields(cfg)}
        return {
            k: v
            for k, v in entry.items()
            if k in stored or k in self.always or k not in defaults
            or (getattr(cfg, k) != defaults[k] and getattr(cfg, k) not in ("", (), {}))
        }

    def _refuse_masked(self, new: dict[str, Any], old: dict[str, Any] | None) -> None:
        """A masked value that is not the stored one's mask (copied from another entry?)."""
        sent = new.get(self.secret) if self.secret else None
        if old is not None and self.secret and sent is old.get(self.secret):
            return  # resolved to the stored value
        if isinstance(sent, str) and _MASKED.fullmatch(sent):
            raise ConfigError([f"{self.secret}: {sent!r} is a masked value, not a key: send the "
                               "real key, or leave it out to keep the stored one"])


def _new_map(doc: Any, entry: dict[str, Any], node: Node) -> Any:
    if _is_rt(doc):
        return CommentedMap((k, node(v)) for k, v in entry.items())  # block style
    return dict(entry)


# Round-trip documents: the comment lines after the last entry of a block (often a commented-out
# sample, then a blank line) belong to that entry's last scalar. When an entry is appended or the
# last one deleted, they move along so that they stay at the end of the block.
Holder = tuple[CommentedMap, Any]


def _trailing(node: Any, *, before_last: bool = False) -> Holder | None:
    """The (mapping, key) whose scalar value ends ``node``'s text, or None."""
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


class Channels(Kind):
    secret = "api_key"
    secret_maps = ("headers",)
    secret_urls = ("proxy",)

    def parse(self, entry: dict[str, Any]) -> ChannelConfig | None:
        return parse_channel(entry, "channel", [])

    def users(self, config: Config, name: str) -> list[str]:
        return [r.name for r in config.rules if r.channel == name]


class Rules(Kind):
    def parse(self, entry: dict[str, Any]) -> RuleConfig | None:
        return parse_rule(entry, "rule", [])


class ApiKeys(Kind):
    """``security.auth.api_keys``: ``{name: key}``, ``{name: {key, ...}}`` or ``[{name, key}]``."""

    secret = "key"

    def items(self, config: Config) -> Sequence[Any]:
        return config.security.api_keys

    def mask(self, value: str) -> str:
        return mask_key(value)

    def parse(self, entry: dict[str, Any]) -> ApiKeyConfig | None:
        rest = {k: v for k, v in entry.items() if k != "name"}
        return parse_api_key(str(entry.get("name")), rest, "key", [])

    def _container(self, doc: Any, *, create: bool) -> Any:
        node = doc
        for key in ("security", "auth", "api_keys"):
            child = node.get(key) if isinstance(node, dict) else None
            wanted = (dict, list) if key == "api_keys" else dict
            if not isinstance(child, wanted):
                if not create:
                    return None
                child = node[key] = CommentedMap() if _is_rt(doc) else {}
            node = child
        return node

    def _key_of(self, keys: dict[Any, Any], name: str) -> Any:
        return next((k for k in keys if str(k) == name), None)

    def find(self, doc: Any, name: str) -> dict[str, Any] | None:
        keys = self._container(doc, create=False)
        if isinstance(keys, list):
            i = self._index(keys, name)
            return None if i is None else dict(keys[i])
        if not isinstance(keys, dict) or (k := self._key_of(keys, name)) is None:
            return None
        value = keys[k]
        return {"name": name, **value} if isinstance(value, dict) else {"name": name, "key": value}

    def put(self, doc: Any, name: str, merged: dict[str, Any], changed: frozenset[str],
            created: bool, *, node: Node) -> None:
        keys = self._container(doc, create=True)
        if isinstance(keys, list):
            i = None if created else self._index(keys, name)
            if i is None:
                _append(keys, _new_map(doc, merged, node))
            else:
                _update(keys[i], merged, changed, node)
            return
        rest = {k: v for k, v in merged.items() if k != "name"}
        if "key" in rest:
            rest = {"key": rest.pop("key"), **rest}
        k = None if created else self._key_of(keys, name)
        if k is None:
            k = key_node(name) if _is_rt(doc) else name
            before = _trailing(keys)
            keys[k] = node(rest["key"]) if list(rest) == ["key"] else _new_map(doc, rest, node)
            _carry_comment(before, _trailing(keys))
        elif isinstance(keys[k], dict):
            _update(keys[k], rest, changed, node)
        elif list(rest) == ["key"]:
            if "key" in changed:
                keys[k] = node(rest["key"])
        else:  # a bare key gains options: becomes a mapping, the key keeping its text
            stored = keys[k]
            keys[k] = _new_map(doc, rest, node)
            if "key" not in changed:
                keys[k]["key"] = stored  # same position: "key" came first in ``rest``

    def drop(self, doc: Any, name: str) -> None:
        keys = self._container(doc, create=False)
        if isinstance(keys, list):
            i = self._index(keys, name)
            if i is not None:
                _delete(keys, i)
        elif isinstance(keys, dict) and (k := self._key_of(keys, name)) is not None:
            if list(keys)[-1] == k and len(keys) > 1:
                _carry_comment(_trailing(keys), _trailing(keys, before_last=True))
            del keys[k]


CHANNELS = Channels("channel", "channels", ("name", "type"))
RULES = Rules("rule", "rules", ("name", "channel", "expression"))
API_KEYS = ApiKeys("API key", "keys", ("name", "key"))
