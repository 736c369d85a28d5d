"""One module per channel type; ``make_providers`` maps a config type to its provider.

``adapter_for(provider, path)`` is the API-shape hook (``base.Adapter``): the adapter that
translates a client request on endpoint ``path`` (below /v1) for a channel of that provider, or
None when the channel speaks the client's shape and bytes pass through. ``ADAPTERS`` is the
table; add an entry for a new (provider, front) pair. Which endpoints a provider serves at all
is ``config.PROVIDER_ENDPOINTS`` (the router excludes the others).
"""

from __future__ import annotations

import aiohttp

from .anthropic import AnthropicProvider, ChatToMessages
from .azure import AzureProvider
from .base import Adapter, Provider
from .h1 import H1Pool
from .messages_chat import MessagesToChat
from .mock import MockProvider
from .openai import OpenAIProvider

ADAPTERS: dict[tuple[str, str], Adapter] = {
    ("anthropic", "/chat/completions"): ChatToMessages(),
    # The /v1/messages front on OpenAI-compatible channels (anthropic ones take it unchanged).
    ("openai", "/messages"): MessagesToChat(),
    ("azure", "/messages"): MessagesToChat(),
    ("mock", "/messages"): MessagesToChat(),
}


def adapter_for(provider: str, path: str) -> Adapter | None:
    return ADAPTERS.get((provider, path))


def make_providers(
    session: aiohttp.ClientSession, pool: H1Pool | None = None
) -> dict[str, Provider]:
    """The HTTP providers send direct calls through ``pool`` (the lean client) when given, calls
    through an outbound proxy (and all calls without a pool) through ``session``."""
    return {
        "openai": OpenAIProvider(session, pool),
        "azure": AzureProvider(session, pool),
        "anthropic": AnthropicProvider(session, pool),
        "mock": MockProvider(),
    }
