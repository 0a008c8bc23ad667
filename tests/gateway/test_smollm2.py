"""SmolLM2-135M-Instruct end to end: the capital question through the official `openai`
client, `tessera serve --qemu` and the board, answers Paris."""

import openai

from conftest import EVENT_DEADLINE


def test_the_capital_of_france_is_paris(smollm2_gateway):
    client = openai.OpenAI(base_url=smollm2_gateway.url + "/v1", api_key="unused", timeout=EVENT_DEADLINE * 3, max_retries=0)
    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1.gguf",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in answer.choices[0].message.content, answer.choices[0].message.content
    assert answer.usage.prompt_tokens > 10 and answer.usage.completion_tokens <= 24
    # Streamed, the same greedy answer arrives one chunk per token: every token of this answer
    # is whole text, and the end-of-turn token that ends it has none.
    chunks = list(
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1.gguf",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert "".join(content) == answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert len(content) == chunks[-1].usage.completion_tokens - 1 == answer.usage.completion_tokens - 1
