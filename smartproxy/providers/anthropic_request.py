"""OpenAI chat request -> Anthropic Messages request, as a pure function over dicts.

``chat_to_messages(body, model=..., default_max_tokens=...)`` returns the Messages API body, or
raises ``Untranslatable`` (a 400 naming the field) for anything Anthropic cannot be told: a field
is translated or refused, never dropped. What is done (and why):

- ``system``/``developer`` messages go to the top-level ``system`` (one string, or text blocks when
  there are several); Anthropic has no system role inside ``messages``.
- ``role: tool`` results become ``tool_result`` blocks of a user message; consecutive results (and a
  user message right after them) are merged into ONE user message, results first: Anthropic wants
  every result of a turn's parallel tool calls in the next user message.
- assistant ``tool_calls`` become ``tool_use`` blocks (``arguments`` parsed: ``""`` means ``{}``).
- empty text blocks are left out: Anthropic refuses them ("text content blocks must be non-empty").
- ``stop`` -> ``stop_sequences``; a whitespace-only entry is refused (Anthropic refuses those,
  and leaving it out would let the answer run past where the client wanted it to stop).
- images: a ``data:`` URL becomes a base64 source with its media type, http(s) a url source;
  ``detail``: Anthropic always looks at an image at full resolution (up to its size limit), which
  is what ``high`` and ``auto`` ask for; ``low`` (a 512 px thumbnail) cannot be asked and is
  refused.
- ``response_format: json_schema`` -> ``output_config.format`` (Anthropic structured outputs);
  its ``name`` is a label OpenAI requires and Anthropic has no place for, and Anthropic always
  holds the answer to the schema (what ``strict: true`` asks; ``strict: false`` asks for less).
  Its ``description`` (which tells the model what the answer is for) has no place there and is
  refused, as is any other key. ``json_object`` has no counterpart (Anthropic needs the schema)
  and is refused.
- tools: ``cache_control`` beside ``function`` goes on the Anthropic tool (prompt caching, as on
  content parts); any other key of a tool, of its ``function``, or of an assistant's tool call
  (beside ``id``, ``type``, ``function.name``/``arguments``) is refused.
- ``stream_options``: ``include_usage`` is honoured; ``include_obfuscation`` is OpenAI's padding of
  stream events, which Anthropic does not add; any other key is refused.
- ``n: 1``, ``logprobs: false``, zero penalties and other values that mean "the default" pass.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import Untranslatable

# Fields whose default value says nothing: accepted when they hold it, refused otherwise.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "seed": (None,),
    "store": (None, False),
    "metadata": (None, {}),
    "service_tier": (None, "auto", "default"),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "functions": (None, []),
    "function_call": (None,),
}
_HANDLED = frozenset(
    {
        "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "stop", "temperature", "top_p", "top_k", "user", "tools", "tool_choice",
        "parallel_tool_calls", "response_format",
    }
)  # fmt: skip
_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name"})
# The keys each OpenAI content part may have (``cache_control``: Anthropic prompt caching, which
# clients that know Anthropic put on OpenAI parts; it is passed on).
_PART_KEYS = {
    "text": frozenset({"type", "text", "cache_control"}),
    "refusal": frozenset({"type", "refusal"}),
    "image_url": frozenset({"type", "image_url", "cache_control"}),
    "file": frozenset({"type", "file", "cache_control"}),
}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_STREAM_OPTIONS = frozenset({"include_usage", "include_obfuscation"})
_TOOL_KEYS = frozenset({"type", "function", "cache_control"})
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
_TOOL_CALL_KEYS = frozenset({"id", "type", "function"})
_CALL_FUNCTION_KEYS = frozenset({"name", "arguments"})
_RESPONSE_FORMAT_KEYS = frozenset({"type", "json_schema"})
_JSON_SCHEMA_KEYS = frozenset({"name", "schema", "strict"})
_IMAGE_KEYS = frozenset({"url", "detail"})


def refuse(field: str, why: str) -> Untranslatable:
    return Untranslatable(
        f"'{field}' cannot be sent to an Anthropic channel: {why}",
        param=field,
        code="unsupported_parameter",
    )


def chat_to_messages(
    body: dict[str, Any], *, model: str, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """The Messages API body for an OpenAI chat completion request (see the module docstring)."""
    for key, value in body.items():
        if key in _HANDLED:
            continue
        if key not in _NEUTRAL:
            raise refuse(key, "Anthropic's Messages API has no such field")
        allowed = _NEUTRAL[key]
        if value not in allowed:
            if allowed == (None,):
                raise refuse(key, "Anthropic has no such option")
            raise refuse(key, f"only the default {allowed[-1]!r} can be translated, not {value!r}")
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"model": model}
    if system:  # one plain block reads better as a string (a cache_control keeps the block)
        out["system"] = system[0]["text"] if len(system) == 1 and len(system[0]) == 2 else system
    out["messages"] = messages
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out["max_tokens"] = max_tokens if max_tokens is not None else default_max_tokens
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise refuse("stop", "must be a string or a list of strings")
        blank = [s for s in stops if not s.strip()]
        if blank:
            raise refuse("stop", f"Anthropic refuses stop sequences that are only whitespace "
                                 f"({', '.join(map(ascii, blank))})")
        if stops:
            out["stop_sequences"] = stops
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("user") is not None:
        out["metadata"] = {"user_id": str(body["user"])}
    if body.get("stream"):
        out["stream"] = True
    options = body.get("stream_options")
    if isinstance(options, dict):
        for key in options.keys() - _STREAM_OPTIONS:
            raise refuse(f"stream_options.{key}", "Anthropic has no such stream option")
    output_format = _output_format(body.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and tools:
        out["tool_choice"] = choice
    elif choice is not None and choice["type"] in ("any", "tool"):
        raise refuse("tool_choice", "a required or named tool needs tools")
    return out


def _output_format(spec: Any) -> dict[str, Any] | None:
    """``response_format`` -> Anthropic structured outputs (``output_config.format``)."""
    if spec is None or spec == {"type": "text"}:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    json_schema = spec.get("json_schema") if kind == "json_schema" else None
    schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
    if not isinstance(json_schema, dict) or not isinstance(schema, dict):
        why = "only json_schema (with its schema) or text can be translated"
        raise refuse("response_format", f"{why}, not {kind!r}" if kind else why)
    for key in spec.keys() - _RESPONSE_FORMAT_KEYS:
        raise refuse(f"response_format.{key}", "Anthropic structured outputs have no such field")
    for key in json_schema.keys() - _JSON_SCHEMA_KEYS:
        raise refuse(f"response_format.json_schema.{key}",
                     "Anthropic structured outputs take only the schema")  # fmt: skip
    return {"type": "json_schema", "schema": schema}


# ----------------------------------------------------------------------------- tools
def _tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise refuse(f"{where}.type", "only function tools can be translated")
    for key in tool.keys() - _TOOL_KEYS:
        raise refuse(f"{where}.{key}", "Anthropic tools have no such field")
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise refuse(f"{where}.function", "must be an object with a name")
    for key in fn.keys() - _FUNCTION_KEYS:
        raise refuse(f"{where}.function.{key}", "Anthropic tools have no such field")
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    params = fn.get("parameters")
    out["input_schema"] = (
        params if isinstance(params, dict) else {"type": "object", "properties": {}}
    )
    if fn.get("strict") is not None:
        out["strict"] = bool(fn["strict"])
    if tool.get("cache_control") is not None:  # a prompt caching breakpoint, as on parts
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any]
    if choice is None:
        if parallel is False:
            return {"type": "auto", "disable_parallel_tool_use": True}
        return None
    if choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise refuse("tool_choice", "must be auto, required, none or a named function")
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# ----------------------------------------------------------------------------- messages
def _messages(raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise refuse("messages", "must be a non-empty list")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise refuse(where, "must be an object")
        for key, value in msg.items():
            if key not in _MESSAGE_KEYS and value not in (None, [], ""):
                raise refuse(f"{where}.{key}", "Anthropic messages have no such field")
        if msg.get("name") and msg.get("role") != "tool":  # a tool's name is its call's
            raise refuse(f"{where}.name", "Anthropic messages have no participant names")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(msg.get("content"), f"{where}.content", text_only=True))
            continue
        if role == "user":
            blocks = _blocks(msg.get("content"), f"{where}.content")
        elif role == "assistant":
            blocks = _blocks(msg.get("content"), f"{where}.content", text_only=True)
            blocks += [_tool_use(c, f"{where}.tool_calls[{j}]")
                       for j, c in enumerate(msg.get("tool_calls") or [])]  # fmt: skip
        elif role == "tool":
            role = "user"
            blocks = [_tool_result(msg, where)]
        else:
            raise refuse(f"{where}.role", f"{role!r} cannot be translated")
        if not blocks:
            continue  # nothing left once empty text is gone
        if out and out[-1]["role"] == role:
            _merge(out[-1], blocks)
        else:
            out.append({"role": role, "content": blocks})
    for m in out:  # one plain text block reads better (and is what most clients send) as a string
        content = m["content"]
        if len(content) == 1 and content[0]["type"] == "text" and len(content[0]) == 2:
            m["content"] = content[0]["text"]
    return system, out


def _merge(last: dict[str, Any], blocks: list[dict[str, Any]]) -> None:
    """Append ``blocks`` to the previous message of the same role; tool results stay first."""
    merged = last["content"] + blocks
    results = [b for b in merged if b["type"] == "tool_result"]
    last["content"] = results + [b for b in merged if b["type"] != "tool_result"]


def _blocks(content: Any, where: str, *, text_only: bool = False) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise refuse(where, "must be a string or a list of content parts")
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        block: dict[str, Any]
        if kind not in _PART_KEYS or (text_only and kind in ("image_url", "file")):
            raise refuse(f"{where}[{j}].type", f"a {kind!r} part cannot be translated here")
        for key in part:
            if key not in _PART_KEYS[kind]:
                raise refuse(f"{where}[{j}].{key}", "Anthropic content blocks have no such field")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise refuse(f"{where}[{j}].{kind}", "must be a string")
            if not text:
                continue  # Anthropic refuses empty text blocks
            block = {"type": "text", "text": text}
        elif kind == "image_url":
            block = _image(part.get("image_url"), f"{where}[{j}].image_url")
        else:
            block = _document(part.get("file"), f"{where}[{j}].file")
        if part.get("cache_control") is not None:  # prompt caching breakpoints go through
            block["cache_control"] = part["cache_control"]
        out.append(block)
    return out


def _image(spec: Any, where: str) -> dict[str, Any]:
    if isinstance(spec, dict):
        for key in spec.keys() - _IMAGE_KEYS:
            raise refuse(f"{where}.{key}", "Anthropic images have no such field")
        if spec.get("detail", "auto") not in ("auto", "high"):
            raise refuse(f"{where}.detail", "Anthropic looks at images at full resolution: "
                                            f"'auto' or 'high' can be translated, not {spec['detail']!r}")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise refuse(f"{where}.url", "must be a string")
    if url.startswith("data:"):
        media_type, data = _data_url(url, f"{where}.url")
        if media_type not in _IMAGE_TYPES:
            raise refuse(f"{where}.url", f"image type {media_type!r} is not jpeg, png, gif or webp")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise refuse(f"{where}.url", "must be a data: or http(s) URL")


def _document(spec: Any, where: str) -> dict[str, Any]:
    data_url = spec.get("file_data") if isinstance(spec, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise refuse(where, "only inline file_data (a data: URL) can be translated, not file_id")
    media_type, data = _data_url(data_url, f"{where}.file_data")
    if media_type != "application/pdf":
        raise refuse(f"{where}.file_data", f"only PDF documents are supported, not {media_type!r}")
    source = {"type": "base64", "media_type": media_type, "data": data}
    out: dict[str, Any] = {"type": "document", "source": source}
    if spec.get("filename"):
        out["title"] = str(spec["filename"])
    return out


def _data_url(url: str, where: str) -> tuple[str, str]:
    head, sep, data = url[5:].partition(",")
    media_type, _, encoding = head.partition(";")
    if not sep or encoding != "base64" or not media_type:
        raise refuse(where, "a data: URL must look like data:<type>;base64,<data>")
    return media_type, data


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not call.get("id"):
        raise refuse(where, "a tool call needs an id and a function name")
    if call.get("type", "function") != "function":
        raise refuse(f"{where}.type", "only function tool calls can be translated")
    for key in call.keys() - _TOOL_CALL_KEYS:
        raise refuse(f"{where}.{key}", "Anthropic tool calls have no such field")
    for key in fn.keys() - _CALL_FUNCTION_KEYS:
        raise refuse(f"{where}.function.{key}", "Anthropic tool calls have no such field")
    args = fn.get("arguments") or "{}"
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        raise refuse(f"{where}.function.arguments", "is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise refuse(f"{where}.function.arguments", "must be a JSON object")
    return {"type": "tool_use", "id": str(call["id"]), "name": fn["name"], "input": parsed}


def _tool_result(msg: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise refuse(f"{where}.tool_call_id", "a tool message needs the id of its call")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _blocks(content, f"{where}.content")
        if parts:
            block["content"] = parts
    return block
