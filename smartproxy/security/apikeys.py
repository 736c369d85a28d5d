"""Gateway API keys: where a client's key is found, how it is checked, how it is shown in logs.

Keys are configured plain or as ``sha256:<hex>``; both are stored only as their SHA-256 digest.
A presented key is hashed once and looked up in a dict, so a check costs the same with 10 or
10,000 keys. The dict lookup compares digests, not keys, so its timing tells an attacker nothing
about a key's characters; the final ``hmac.compare_digest`` keeps the one comparison that decides
the answer constant-time as well.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from ..config import ApiKeyConfig
from ..config.model import mask_secret as mask_secret  # re-exported: shown in admin views

MALFORMED = "malformed Authorization header"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's configured name (used in logs, metrics, rules) and its options."""

    name: str
    key: ApiKeyConfig


class KeyRing:
    """The configured keys, indexed by SHA-256 digest; rebuilt on each config snapshot."""

    __slots__ = ("_by_digest",)

    def __init__(self, keys: Sequence[ApiKeyConfig]) -> None:
        self._by_digest: dict[str, tuple[str, Principal]] = {}
        for cfg in keys:
            digest = cfg.sha256  # hashes a plain key once, here, not per request
            other = self._by_digest.get(digest)
            if other is not None:
                # Two names for one key would make the name (and so the limits) ambiguous.
                raise ValueError(f"API keys {other[1].name!r} and {cfg.name!r} are the same key")
            self._by_digest[digest] = (digest, Principal(cfg.name, cfg))

    def authenticate(self, presented: str) -> Principal | None:
        """The principal whose key is ``presented``, or None."""
        digest = hashlib.sha256(presented.encode()).hexdigest()
        entry = self._by_digest.get(digest)
        if entry is None:
            return None
        stored, principal = entry
        return principal if hmac.compare_digest(stored, digest) else None

    def names(self) -> Iterator[str]:
        return (principal.name for _, principal in self._by_digest.values())

    def __len__(self) -> int:
        return len(self._by_digest)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None or isinstance(headers, (CIMultiDict, CIMultiDictProxy)):
        return value
    # A plain dict (tests, other frameworks): header names are case-insensitive.
    wanted = name.lower()
    for key, item in headers.items():
        if key.lower() == wanted:
            return item
    return None


def _checked(key: str) -> str:
    # Printable ASCII without spaces: anything else is a mangled header, not a key.
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError(MALFORMED)
    return key


def extract_key(headers: Mapping[str, str]) -> str | None:
    """The API key a client sent, from ``Authorization: Bearer`` or ``x-api-key``; None if none.

    Raises ``ValueError("malformed Authorization header")`` for a header that is present but is not
    a usable key: another scheme (``Basic ...``), ``Bearer`` without a key, spaces or control chars.
    ``Authorization`` wins when both are sent (it is what the OpenAI SDKs send).
    """
    auth = _header(headers, "Authorization")
    if auth is not None:
        parts = auth.strip().split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise ValueError(MALFORMED)
        return _checked(parts[1].strip())
    api_key = _header(headers, "x-api-key")
    if api_key is not None:
        return _checked(api_key.strip())
    return None


def key_prefix(key: str) -> str:
    """A short prefix of a presented key, for logs: enough to tell keys apart, never the key."""
    shown = 6 if len(key) > 8 else min(3, len(key) // 2)
    return key[:shown] + "…"


