"""The token estimates: a whole answer's completion from its text, in each API shape."""

from __future__ import annotations

import json

from smartproxy.routing.estimate import answer_tokens


def test_chat_answer_counts_content_refusal_and_tool_calls() -> None:
    answer = {
        "choices": [
            {"message": {"role": "assistant", "content": "x" * 40, "refusal": None}},
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get", "arguments": '{"city":"Paris"}'}},
                    ],
                }
            },
        ]
    }  # fmt: skip
    assert answer_tokens(answer, 4) == 10 + 5  # 40 chars; "get" + 16 chars of arguments


def test_completions_responses_and_anthropic_answers() -> None:
    assert answer_tokens({"choices": [{"text": "y" * 9}]}, 4) == 3
    responses = {
        "object": "response",
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "a" * 8}]},
            {"type": "message", "content": [{"type": "output_text", "text": "b" * 8}]},
            {"type": "function_call", "name": "f", "arguments": "{}"},
        ],
    }
    assert answer_tokens(responses, 4) == 5  # 8 + 8 + 1 + 2 = 19 chars
    tool_input = {"q": "z"}
    anthropic = {
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "t" * 4},
            {"type": "text", "text": "u" * 4},
            {"type": "tool_use", "name": "look", "input": tool_input},
        ],
    }
    assert answer_tokens(anthropic, 4) == 2 + 1 + (4 + len(json.dumps(tool_input))) // 4


def test_cjk_counts_one_token_a_character_and_nothing_is_zero() -> None:
    assert answer_tokens({"choices": [{"message": {"content": "你好世界"}}]}, 4) == 4
    assert answer_tokens({"object": "list", "data": [{"embedding": [0.1]}]}, 4) == 0
    assert answer_tokens(None, 4) == 0
    assert answer_tokens({"choices": "nonsense", "output": None}, 4) == 0
