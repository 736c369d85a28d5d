"""Azure OpenAI channels: the OpenAI API under Azure's URL shapes, the key sent as ``api-key``.

``endpoint`` is the resource (``https://RESOURCE.openai.azure.com``; a trailing ``/openai`` or
``/openai/v1`` means the same). With ``api_version`` the URL is the deployments form
``/openai/deployments/{deployment}{path}?api-version=...`` where the deployment is the upstream
model name (after ``model_mapping``); without it, the v1 form ``/openai/v1{path}``. The
Responses API has no deployments form: with ``api_version`` it is ``/openai/responses?api-version=``. Bodies and
answers pass through unchanged, like any ``openai`` channel.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from multidict import CIMultiDict

from ..config import ChannelConfig
from .base import OutgoingRequest
from .openai import OpenAIProvider


def resource_base(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    for tail in ("/openai/v1", "/openai"):
        if base.endswith(tail):
            return base[: -len(tail)]
    return base


def azure_url(channel: ChannelConfig, path: str, query_string: str, deployment: str) -> str:
    base = resource_base(channel.endpoint)
    if channel.api_version:
        version = urlencode({"api-version": channel.api_version})
        query = f"{query_string}&{version}" if query_string else version
        if path == "/responses" or path.startswith("/responses/"):  # not per deployment
            return f"{base}/openai{path}?{query}"
        return f"{base}/openai/deployments/{quote(deployment, safe='')}{path}?{query}"
    url = f"{base}/openai/v1{path}"
    return f"{url}?{query_string}" if query_string else url


class AzureProvider(OpenAIProvider):
    name = "azure"

    def url(self, channel: ChannelConfig, request: OutgoingRequest) -> str:
        return azure_url(channel, request.path, request.query_string, request.model)

    def headers(self, channel: ChannelConfig, request: OutgoingRequest) -> CIMultiDict[str]:
        headers = CIMultiDict(request.headers)
        for k, v in channel.headers.items():
            headers[k] = v
        headers.popall("Authorization", None)
        if channel.api_key:
            headers["api-key"] = channel.api_key
        return headers
