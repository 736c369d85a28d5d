"""The base ``Kind``: where a kind's entries live in a config document, how a posted entry is
found, merged (the rules are in :mod:`smartproxy.config.kinds`) and shown with secrets masked,
and the masks themselves (``mask_key``, ``mask_url``). The kinds are in ``kinds``; the document
edits in ``kinddoc``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError
from . import Config, TimeWindow, expand_env
from .kinddoc import Node, _append, _delete, _empty_seq, _new_map, _update
from .model import mask_secret

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

    # -- values that come from a server-wide setting while the entry sets none
    inheritable: tuple[str, ...] = ()

    def inherited(self, obj: Any, config: Config) -> dict[str, Any]:
        """``{field: value in effect}`` for the fields ``obj`` leaves to a server-wide setting."""
        return {}

    def without_inherited(self, posted: dict[str, Any], config: Config) -> dict[str, Any]:
        """A posted entry without ``inherited`` (what ``view`` adds), and without the fields the
        stored entry leaves to a server-wide setting whose posted value is that setting's, as
        ``GET`` showed it: posted back, they keep following the setting (a masked proxy URL is
        never written as a value). An edited value is stored. ConfigError for an ``inherited``
        that is not a list of this kind's inheritable fields."""
        out = {k: v for k, v in posted.items() if k != "inherited"}
        names = posted.get("inherited", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(["inherited: must be a list of field names (as GET shows it)"])
        unknown = [n for n in names if n not in self.inheritable]
        if unknown:
            allowed = ", ".join(self.inheritable) or "none"
            raise ConfigError([f"inherited: {', '.join(map(repr, unknown))} cannot follow a "
                               f"server-wide setting (fields that can: {allowed})"])
        if not self.inheritable:
            return out
        stored = self.get(config, str(out.get("name", "")))
        own = SimpleNamespace(**{f: getattr(stored, f, None) for f in self.inheritable})
        for field, value in self.inherited(own, config).items():
            if field in out and out[field] == self._shown(field, value):
                del out[field]
        return out

    def _shown(self, field: str, value: Any) -> Any:
        value = _plain(value)
        return mask_url(value) if field in self.secret_urls and isinstance(value, str) else value

    def view(
        self, obj: Any, *, masked: bool = True, config: Config | None = None
    ) -> dict[str, Any]:
        """The entry with every field and the value in effect (defaults included: ``status:
        active``, ``models: []``), secrets masked. With ``config``, a field left to a
        server-wide setting shows that setting's value and is named in ``inherited``.
        The keys are the file's, so ``GET`` -> edit -> ``POST`` works."""
        out: dict[str, Any] = {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if config is not None and self.inheritable:
            now = self.inherited(obj, config)
            out.update({k: _plain(v) for k, v in now.items()})
            out["inherited"] = sorted(now)
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
            items = doc[self.section] = _empty_seq(doc)
        return items

    def _index(self, items: list[Any], name: str) -> int | None:
        for i, item in enumerate(items):
            if isinstance(item, dict) and str(expand_env(str(item.get("name")))) == name:
                return i  # a name written as ${VAR} in the file is found by what it reads
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
