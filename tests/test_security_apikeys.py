"""Gateway API keys: look-up by digest, header extraction, and what logs may show of a key."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from smartproxy.config import ApiKeyConfig
from smartproxy.security.apikeys import KeyRing, Principal, extract_key, key_prefix, mask_secret

PLAIN = "sk-gw-team-a-0123456789"
HASHED_PLAIN = "sk-gw-team-b-9876543210"
HASHED = ApiKeyConfig(
    name="team-b",
    key="sha256:" + hashlib.sha256(HASHED_PLAIN.encode()).hexdigest().upper(),
    requests_per_minute=60,
)


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing([ApiKeyConfig(name="team-a", key=PLAIN), HASHED])


def test_plain_key_authenticates(ring: KeyRing) -> None:
    principal = ring.authenticate(PLAIN)
    assert principal == Principal("team-a", ApiKeyConfig(name="team-a", key=PLAIN))


def test_hashed_key_authenticates_with_its_options(ring: KeyRing) -> None:
    principal = ring.authenticate(HASHED_PLAIN)
    assert principal is not None
    assert principal.name == "team-b" and principal.key.requests_per_minute == 60


@pytest.mark.parametrize("presented", ["", "sk-unknown", PLAIN + "x", PLAIN[:-1], HASHED.key])
def test_unknown_keys_are_refused(ring: KeyRing, presented: str) -> None:
    assert ring.authenticate(presented) is None  # the stored hash itself is not a key either


def test_len_and_names(ring: KeyRing) -> None:
    assert len(ring) == 2
    assert sorted(ring.names()) == ["team-a", "team-b"]
    assert len(KeyRing([])) == 0


def test_same_key_under_two_names_is_refused() -> None:
    digest = hashlib.sha256(PLAIN.encode()).hexdigest()
    with pytest.raises(ValueError, match="'a' and 'b'"):
        KeyRing([ApiKeyConfig(name="a", key=PLAIN), ApiKeyConfig(name="b", key=f"sha256:{digest}")])


def test_lookup_does_not_scan_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10,000 keys: a hit costs one digest comparison and a miss none, so no scan happens.
    keys = [ApiKeyConfig(name=f"k{i}", key=f"sk-key-{i:05d}-abcdef") for i in range(10_000)]
    ring = KeyRing(keys)
    compared: list[tuple[str, str]] = []
    hashed: list[str] = []
    real_compare = hmac.compare_digest

    def compare(a: str, b: str) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    def no_rehash(key: ApiKeyConfig) -> str:
        hashed.append(key.name)
        return ""

    monkeypatch.setattr(hmac, "compare_digest", compare)  # apikeys calls it as hmac.compare_digest
    monkeypatch.setattr(ApiKeyConfig, "sha256", property(no_rehash))
    principal = ring.authenticate("sk-key-09999-abcdef")
    assert principal is not None and principal.name == "k9999"
    assert ring.authenticate("sk-nope") is None
    assert len(compared) == 1 and hashed == []


# ----------------------------------------------------------------------------- extract_key
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": "Bearer sk-abc"}, "sk-abc"),
        ({"authorization": "bearer sk-abc"}, "sk-abc"),
        ({"AUTHORIZATION": "BEARER   sk-abc  "}, "sk-abc"),
        ({"x-api-key": "sk-xyz"}, "sk-xyz"),
        ({"X-Api-Key": "sk-xyz"}, "sk-xyz"),
        ({"Authorization": "Bearer sk-abc", "x-api-key": "sk-xyz"}, "sk-abc"),
        ({}, None),
        ({"Content-Type": "application/json"}, None),
    ],
)
def test_extract_key(headers: dict[str, str], expected: str | None) -> None:
    assert extract_key(headers) == expected


def test_extract_key_from_aiohttp_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"X-API-KEY": "sk-xyz"}))
    assert extract_key(headers) == "sk-xyz"
    assert extract_key(CIMultiDictProxy(CIMultiDict())) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": ""},
        {"Authorization": "sk-abc"},
        {"Authorization": "Bearer sk abc"},
        {"Authorization": "Bearer sk-\x01abc"},
        {"Authorization": "Bearer sk-\tabc"},
        {"Authorization": "Bearer sk-ключ"},
        {"x-api-key": ""},
        {"x-api-key": "sk abc"},
        {"x-api-key": "sk-\x7fabc"},
        {"Authorization": "Basic dXNlcjpwYXNz", "x-api-key": "sk-xyz"},
    ],
)
def test_extract_key_malformed(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="malformed Authorization header"):
        extract_key(headers)


# ----------------------------------------------------------------------------- display
@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("sk-gw-team-a-0123456789", "sk-gw-…"),
        ("123456789", "123456…"),
        ("12345678", "123…"),
        ("1234", "12…"),
        ("12", "1…"),
        ("1", "…"),
        ("", "…"),
    ],
)
def test_key_prefix_never_shows_whole_key(key: str, shown: str) -> None:
    assert key_prefix(key) == shown
    if key:
        assert key not in key_prefix(key)


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        ("sk-proj-abcdefghijklmnop1234", "sk-...1234"),
        ("gsk_abcdefghijklmnopqrstuvwx9876", "...9876"),
        ("ab-cdefghijkl", "ab-...ijkl"),
        ("abcd-efghijklmn", "...klmn"),  # a 5-char "prefix" is part of the secret, not a scheme
        ("-abcdefghijkl", "...ijkl"),
        ("abcdefghijkl", "...ijkl"),
        ("abcdefghijk", "****"),
        ("sk-short", "****"),
        ("", ""),
    ],
)
def test_mask_secret(secret: str, masked: str) -> None:
    assert mask_secret(secret) == masked
