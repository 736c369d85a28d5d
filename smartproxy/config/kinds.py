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

The base ``Kind`` and the masks are in ``kind``, the in-place document edits in ``kinddoc``
(``Kind``, ``mask_key``, ``mask_url`` and ``Node`` are re-exported from here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import (
    ApiKeyConfig,
    ChannelConfig,
    Config,
    RuleConfig,
    expand_env,
    parse_api_key,
    parse_channel,
    parse_rule,
)
from .file import key_node
from .kind import Kind as Kind
from .kind import mask_key as mask_key
from .kind import mask_url as mask_url
from .kinddoc import Node as Node
from .kinddoc import (
    _append,
    _carry_comment,
    _delete,
    _empty_map,
    _is_rt,
    _new_map,
    _trailing,
    _update,
)


class Channels(Kind):
    secret = "api_key"
    secret_maps = ("headers",)
    secret_urls = ("proxy",)

    def parse(self, entry: dict[str, Any]) -> ChannelConfig | None:
        return parse_channel(entry, "channel", [])

    def users(self, config: Config, name: str) -> list[str]:
        return [r.name for r in config.rules if r.channel == name]

    inheritable = ("timeout", "connect_timeout", "first_byte_timeout", "fail_max",
                   "reset_timeout", "proxy")

    def inherited(self, obj: Any, config: Config) -> dict[str, Any]:
        """Timeouts from ``server``, the breaker from ``circuit_breaker``, the outbound proxy
        from ``server.proxy`` (as ``upstream.client`` derives them)."""
        server, cb = config.server, config.circuit_breaker
        own = obj.timeout
        total = own if isinstance(own, (int, float)) and own > 0 else server.timeout
        now = {
            "timeout": server.timeout,
            "connect_timeout": min(server.connect_timeout, total),
            "first_byte_timeout": total,
            "fail_max": cb.fail_max,
            "reset_timeout": cb.reset_timeout,
            "proxy": server.proxy,
        }
        return {k: v for k, v in now.items() if getattr(obj, k) is None and v is not None}


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

    inheritable = ("requests_per_minute", "burst")

    def inherited(self, obj: Any, config: Config) -> dict[str, Any]:
        """The key's bucket from ``security.rate_limit``."""
        limit = config.security.rate_limit
        now = {"requests_per_minute": limit.requests_per_minute, "burst": limit.burst}
        return {k: v for k, v in now.items() if getattr(obj, k) is None}

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
                child = node[key] = _empty_map(doc)
            node = child
        return node

    def _key_of(self, keys: dict[Any, Any], name: str) -> Any:
        # a name written as ${VAR} in the file is found by what it reads
        return next((k for k in keys if str(expand_env(str(k))) == name), None)

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
