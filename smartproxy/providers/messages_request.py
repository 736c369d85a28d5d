"""The ``/v1/messages`` front on OpenAI chat channels: the request, translated (pure).

The inverse of the ``anthropic`` provider's mappings. Request: ``system`` -> a system message;
text and image blocks -> content parts (base64 sources as ``data:`` URLs); assistant ``tool_use``
blocks -> ``tool_calls``; ``tool_result`` blocks -> ``role: tool`` messages (placed before the
rest of their user turn, as OpenAI wants them right after the assistant's calls); ``tools`` ->
functions; ``tool_choice`` any -> required, tool -> a named function;
``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``; ``stop_sequences`` -> ``stop``;
``metadata.user_id`` -> ``user``; ``output_config.format`` (and the older ``output_format``)
``json_schema`` -> ``response_format`` ``json_schema`` (strict, as Anthropic's is constrained);
a tool's ``strict`` -> the function's; streams ask for usage (``stream_options.include_usage``).

Nothing is dropped silently: every field is translated, ignored for a reason written in
``_IGNORED`` (hints that cannot change what a correct answer is), or a ``TranslationError``
naming its path (a 400; the dispatcher then tries a channel that speaks Messages natively):
unknown top-level keys, ``top_k``, ``inference_geo``, server tools, ``mcp_servers``,
``container``, documents and every other block type or block key not mapped here.
``cache_control`` (on blocks, tools and the request) is only a prompt-caching hint: ignored.
An assistant's ``thinking``/``redacted_thinking`` blocks are its earlier private reasoning,
which a chat server cannot take back: left out. A key whose value is ``null`` is not set.
"""

from __future__ import annotations

import json
from typing import Any

Json = dict[str, Any]

# Top-level keys translated below.
_TRANSLATED = frozenset(
    {"model", "messages", "max_tokens", "system", "temperature", "top_p", "stop_sequences",
     "metadata", "tools", "tool_choice", "stream", "output_config", "output_format"}
)  # fmt: skip
# Top-level keys accepted and not sent, each for a reason (the answer stays a correct one).
_IGNORED = {
    "cache_control": "a prompt-caching hint",
    "thinking": "asks for visible reasoning blocks; the chat model answers without them",
    "context_management": "trims old context server-side; the chat server sees it whole",
    "service_tier": "Anthropic's capacity choice; the channel's own tier serves",
    "speed": "Anthropic's fast-output mode; the channel answers at its own speed",
}
# Keys a block may carry besides its content ("cache_control" everywhere: a caching hint).
_BLOCK_KEYS = {
    "text": frozenset({"type", "text", "cache_control", "citations"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control", "caller"}),
}
# ``eager_input_streaming`` only changes how tool input is chunked in a stream.
_TOOL_KEYS = frozenset(
    {"type", "name", "description", "input_schema", "cache_control", "strict",
     "eager_input_streaming"}
)  # fmt: skip


class TranslationError(ValueError):
    """A request field that has no OpenAI chat equivalent; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


# ----------------------------------------------------------------------------- request
def messages_to_chat(body: Json) -> Json:
    """An Anthropic Messages request body -> an OpenAI chat completions request body."""
    for key, value in body.items():
        if value is not None and key not in _TRANSLATED and key not in _IGNORED:
            raise TranslationError(f"'{key}' cannot be sent to an OpenAI-compatible channel", key)
    _check_thinking(body.get("thinking"))
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
    if metadata is not None:
        _check_keys(metadata, frozenset({"user_id"}), "metadata")
        if metadata.get("user_id"):
            out["user"] = str(metadata["user_id"])
    if body.get("tools"):
        out["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(body["tools"])]
    choice = body.get("tool_choice")
    if choice is not None:
        _tool_choice(choice, out)
    _output_format(body, out)
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _check_keys(item: Any, allowed: frozenset[str], at: str) -> None:
    """``item`` is an object whose set keys are all in ``allowed``; else a 400 naming one."""
    if not isinstance(item, dict):
        raise TranslationError(f"{at} must be an object", at)
    for key, value in item.items():
        if value is not None and key not in allowed:
            raise TranslationError(f"{at}.{key} cannot be sent to an OpenAI-compatible channel",
                                   f"{at}.{key}")  # fmt: skip


def _check_block(block: Any, at: str) -> str:
    """The block's type, after checking its keys (``_BLOCK_KEYS``)."""
    kind = block.get("type") if isinstance(block, dict) else None
    allowed = _BLOCK_KEYS.get(kind) if isinstance(kind, str) else None
    if allowed is None:
        raise TranslationError(f"{at}: block type {kind!r} cannot be translated", at)
    _check_keys(block, allowed, at)
    if block.get("citations"):
        raise TranslationError(f"{at}.citations cannot be translated", f"{at}.citations")
    return str(kind)


def _check_thinking(thinking: Any) -> None:
    if thinking is None:
        return
    _check_keys(thinking, frozenset({"type", "budget_tokens", "display"}), "thinking")
    if thinking.get("type") not in ("enabled", "adaptive", "between_tools", "disabled"):
        raise TranslationError(f"thinking.type {thinking.get('type')!r} is not known",
                               "thinking.type")  # fmt: skip


def _output_format(body: Json, out: Json) -> None:
    """``output_config.format`` / ``output_format`` json_schema -> ``response_format``."""
    fmt, at = body.get("output_format"), "output_format"
    config = body.get("output_config")
    if config is not None:
        # ``effort`` trades thoroughness for tokens: the channel answers at its default.
        _check_keys(config, frozenset({"effort", "format"}), "output_config")
        if config.get("format") is not None:
            fmt, at = config["format"], "output_config.format"
    if fmt is None:
        return
    _check_keys(fmt, frozenset({"type", "schema"}), at)
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise TranslationError(f"{at} must be a json_schema with a schema object", at)
    out["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True},
    }


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts = []
        for i, block in enumerate(system):
            if _check_block(block, f"system[{i}]") != "text":
                raise TranslationError(f"system[{i}] must be a text block", f"system[{i}]")
            texts.append(str(block.get("text", "")))
        return "\n\n".join(texts)
    raise TranslationError("'system' must be a string or a list of text blocks", "system")


def _message(message: Any, where: str) -> list[Json]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise TranslationError(f"{where} must have role 'user' or 'assistant'", where)
    _check_keys(message, frozenset({"role", "content"}), where)
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
        kind = _check_block(block, at)
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
            where = f"{at}.content[{k}]"
            if _check_block(item, where) not in ("text", "image"):
                raise TranslationError(f"{where}: only text and images can be a tool result",
                                       where)  # fmt: skip
            part = _part(item, where)
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
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in ("thinking", "redacted_thinking"):
            continue  # the model's earlier reasoning: a chat server cannot take it back
        kind = _check_block(block, at)
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            if block.get("caller") not in (None, {"type": "direct"}):  # called by server code
                raise TranslationError(f"{at}.caller cannot be translated", f"{at}.caller")
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
        else:
            raise TranslationError(f"{at}: block type {kind!r} cannot be translated", at)
    out: Json = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool(tool: Any, where: str) -> Json:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise TranslationError(f"{where}: server tool {kind!r} has no chat equivalent", where)
    _check_keys(tool, _TOOL_KEYS, where)
    function: Json = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = bool(tool["strict"])
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, out: Json) -> None:
    _check_keys(choice, frozenset({"type", "name", "disable_parallel_tool_use"}), "tool_choice")
    kind = choice.get("type")
    if kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif kind in ("auto", "none"):
        out["tool_choice"] = kind
    else:
        raise TranslationError(f"tool_choice.type {kind!r} cannot be translated",
                               "tool_choice.type")  # fmt: skip
    if choice.get("disable_parallel_tool_use") and out.get("tools"):
        out["parallel_tool_calls"] = False
