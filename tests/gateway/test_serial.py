"""The gateway in front of a board on a serial line (`tessera serve --serial`), as with a real
Pi: the board is QEMU with its console on a pseudo-terminal, which the gateway opens as it would
a USB-serial adapter (115200 8N1, raw) and probes with `models` requests until the board
answers."""

import openai

from conftest import EVENT_DEADLINE

MESSAGES = [{"role": "user", "content": "Hello there"}]


def test_a_board_on_a_serial_line_answers_whole_and_streamed(serial_gateway):
    assert serial_gateway.health["board"] == "ready"
    assert serial_gateway.health["qemu_pid"] is None, "the gateway started no QEMU of its own"
    client = openai.OpenAI(base_url=serial_gateway.url + "/v1", api_key="unused", timeout=EVENT_DEADLINE, max_retries=0)
    assert client.models.list().data[0].id == "tiny-a.gguf"
    whole = client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES, max_tokens=6, temperature=0)
    assert whole.usage.completion_tokens == 6 and whole.choices[0].finish_reason == "length"
    chunks = list(
        client.chat.completions.create(
            model="tiny-a.gguf", messages=MESSAGES, max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 6
