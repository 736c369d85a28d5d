"""The ``/v1/messages`` front on OpenAI chat channels: the request, translated (pure).

The inverse of the ``anthropic`` provider's mappings. Request: ``system`` -> a system message;
text and image blocks -> content parts (base64 sources as ``data:`` URLs); assistant ``tool_use``
blocks -> ``tool_calls``; ``tool_result`` blocks -> ``role: tool`` messages (placed before the
rest of their user turn, as OpenAI wants them right after the assistant's calls); ``tools`` ->
functions; ``tool_choice`` any -> required, tool -> a named function;
``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``; ``stop_sequences`` -> ``stop``;
``metadata.user_id`` -> ``user``; streams ask for usage (``stream_options.include_usage``).
Left out on purpose: ``thinking`` blocks and settings, ``top_k``, ``cache_control``,
``context_management`` (hints a chat server has no use for). What has no chat equivalent
(server tools, ``mcp_servers``, ``container``, documents) is a ``TranslationError`` naming the
field (a 400).
"""

from __future__ import annotations

import json
from typing import Any

Json = dict[str, Any]

# Features that run on Anthropic's servers: without them the answer would differ, so a 400.
# (``context_management`` only trims old context server-side: a chat server sees it whole.)
_UNTRANSLATABLE = frozenset({"mcp_servers", "container"})


class TranslationError(ValueError):
    """A request field that has no OpenAI chat equivalent; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


# ----------------------------------------------------------------------------- request
def messages_to_chat(body: Json) -> Json:
    """An Anthropic Messages request body -> an OpenAI chat completions request body."""
    for key in body:
        if key in _UNTRANSLATABLE:
            raise TranslationError(f"'{key}' cannot be sent to an OpenAI-compatible channel", key)
    out: Json = {"model": body.get("model")}
    messages: list[Json] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _system_text(system)})
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise TranslationError("'messages' must be a list", "messages")
    for i, message in enumerate(raw_messages):
        messages.extend(_message(message, f"messages[{i}]"))
    out["messages"] = messages
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    if body.get("tools"):
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(body["tools"])]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        _tool_choice(choice, out)
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n\n".join(
            b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text"
        )
    raise TranslationError("'system' must be a string or a list of text blocks", "system")


def _message(message: Any, where: str) -> list[Json]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise TranslationError(f"{where} must have role 'user' or 'assistant'", where)
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content must be a string or a list of blocks", where)
    if role == "assistant":
        return [_assistant(content, where)]
    tool_messages: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            text, images = _tool_result(block, at)
            tool_messages.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
            )
            parts.extend(images)
        elif kind in ("text", "image"):
            part = _part(block, at)
            if part is not None:
                parts.append(part)
        else:
            raise TranslationError(f"{at}: block type {kind!r} cannot be translated", at)
    out = tool_messages
    if parts:
        if all(p["type"] == "text" for p in parts) and len(parts) == 1:
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _part(block: Json, at: str) -> Json | None:
    if block["type"] == "text":
        text = block.get("text", "")
        return {"type": "text", "text": text} if text else None
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise TranslationError(f"{at}: image source {source.get('type')!r} not supported", at)
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: Json, at: str) -> tuple[str, list[Json]]:
    content = block.get("content", "")
    texts: list[str] = []
    images: list[Json] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, item in enumerate(content):
            part = _part(item, f"{at}.content[{k}]") if isinstance(item, dict) else None
            if part is None:
                continue
            if part["type"] == "text":
                texts.append(part["text"])
            else:  # a tool message carries text only: the image follows in the user turn
                images.append(part)
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    return text, images


def _assistant(content: list[Any], where: str) -> Json:
    texts: list[str] = []
    calls: list[Json] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning: a chat server cannot take it back
        else:
            at = f"{where}.content[{j}]"
            raise TranslationError(f"{at}: block type {kind!r} cannot be translated", at)
    out: Json = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool(tool: Any, where: str) -> Json:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise TranslationError(f"{where}: server tool {kind!r} has no chat equivalent", where)
    function: Json = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Json, out: Json) -> None:
    kind = choice.get("type")
    if kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in ("auto", "none"):
        out["tool_choice"] = kind
    if choice.get("disable_parallel_tool_use") and out.get("tools"):
        out["parallel_tool_calls"] = False
