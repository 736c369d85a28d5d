"""One module per channel type; ``make_providers`` maps a config type to its provider."""

from __future__ import annotations

import aiohttp

from .base import Provider
from .mock import MockProvider
from .openai import OpenAIProvider


def make_providers(session: aiohttp.ClientSession) -> dict[str, Provider]:
    return {"openai": OpenAIProvider(session), "mock": MockProvider()}
