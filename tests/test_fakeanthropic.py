"""The fake Anthropic upstream (tests/fakeanthropic.py) speaks the real API: the official
``anthropic`` SDK parses its answers and streams into its own types, and its refusals are the
SDK's ``BadRequestError``. The translation tests rely on this fake, so it is checked here."""

from __future__ import annotations

import anthropic
import pytest

TWO_TOOLS = [("toolu_W", "get_weather", {"city": "Oslo"}), ("toolu_T", "get_time", {})]


async def sdk_for(anthropic_factory, **kw):
    fake, url = await anthropic_factory(**kw)
    return fake, anthropic.AsyncAnthropic(base_url=url, api_key=fake.api_key, max_retries=0)


async def test_sdk_reads_messages_and_tool_streams(anthropic_factory):
    fake, sdk = await sdk_for(anthropic_factory, tools=TWO_TOOLS)
    async with sdk:
        msg = await sdk.messages.create(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.content[0].text == "Hello from Claude." and msg.stop_reason == "end_turn"
        assert (msg.usage.input_tokens, msg.usage.output_tokens) == (21, 9)
        fake.script = ["tools"]
        async with sdk.messages.stream(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_message()
        assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
        assert final.content[1].input == {"city": "Oslo"} and final.content[2].input == {}
        assert final.stop_reason == "tool_use" and final.usage.output_tokens == 9
        assert fake.seen[-1].headers["anthropic-version"]  # the SDK sends its own


async def test_sdk_sees_the_fakes_refusals_and_stream_errors(anthropic_factory):
    fake, sdk = await sdk_for(anthropic_factory)
    async with sdk:
        with pytest.raises(anthropic.BadRequestError, match="must be non-empty"):
            await sdk.messages.create(model="c", max_tokens=5, messages=[
                {"role": "user", "content": [{"type": "text", "text": ""}]}])  # fmt: skip
        fake.script = ["fail-529"]
        with pytest.raises(anthropic.APIStatusError) as info:
            await sdk.messages.create(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 529
        assert info.value.body["error"]["type"] == "overloaded_error"
        fake.script = ["error-after-3"]
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            async with sdk.messages.stream(
                model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                await stream.get_final_message()
