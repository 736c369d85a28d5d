"""Answers compressed although the gateway asked for identity: reading gzip and deflate."""

from __future__ import annotations

import zlib

import pytest
from fakeupstream import Encoder
from multidict import CIMultiDict

from smartproxy.upstream.encoding import Inflater, content_coding, decoded
from smartproxy.upstream.errors import UpstreamConnectError

TEXT = b'{"usage": {"prompt_tokens": 1}}' * 20


def test_content_coding_ignores_identity_and_case() -> None:
    assert content_coding(CIMultiDict()) is None
    assert content_coding(CIMultiDict({"Content-Encoding": "identity"})) is None
    assert content_coding(CIMultiDict({"content-encoding": " GZip "})) == "gzip"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
def test_whole_and_byte_by_byte(coding: str) -> None:
    encoder = Encoder(coding)
    raw = encoder.whole(TEXT)
    assert decoded(raw, encoder.header, 10_000) == TEXT
    inflater = Inflater(encoder.header, 10_000)
    out = b"".join(inflater.feed(raw[i : i + 1]) for i in range(len(raw)))
    assert out + inflater.flush() == TEXT


def test_what_cannot_be_read_is_none() -> None:
    assert decoded(Encoder("gzip").whole(TEXT), "br", 10_000) is None  # not a coding we read
    assert decoded(b"not gzip at all", "gzip", 10_000) is None
    bomb = zlib.compress(b"\0" * 1_000_000)  # 1 kB that would be 1 MB
    assert decoded(bomb, "deflate", 64 * 1024) is None
    with pytest.raises(UpstreamConnectError, match="more than 65536 bytes"):
        Inflater("deflate", 64 * 1024).feed(bomb)
