"""`tessera serve` against a QEMU board with small synthetic models, through the official
`openai` client and raw HTTP: models, chat, streaming, stop sequences, concurrency, a client
that leaves mid-stream, hostile requests, and a board that reboots under load.

The card holds tiny-a.gguf (the default), tiny-b.gguf and slow.gguf (a larger model whose
answers take long enough to leave or reboot in the middle of one).
"""

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import threading
import urllib.parse

import openai
import pytest

from conftest import EVENT_DEADLINE, get_json, metric, wait_until

MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": "Tell me a story"},
]


@pytest.fixture(scope="module")
def client(tiny_gateway):
    return openai.OpenAI(base_url=tiny_gateway.url + "/v1", api_key="unused", timeout=EVENT_DEADLINE, max_retries=0)


def raw(gateway, method, path, body=None, headers=None):
    """(status, parsed JSON body) of a raw HTTP request."""
    address = urllib.parse.urlsplit(gateway.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=EVENT_DEADLINE)
    connection.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data) if data else None


def assert_error_shape(body, code=None, param=None):
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, body
    if param is not None:
        assert error["param"] == param, body


def test_models_list_the_card_with_the_active_one_first(client, tiny_gateway):
    client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES[1:2], max_tokens=1)
    ids = [model.id for model in client.models.list().data]
    assert sorted(ids) == ["slow.gguf", "tiny-a.gguf", "tiny-b.gguf"]
    assert ids[0] == "tiny-a.gguf", "the active model comes first"
    status, body = get_json(tiny_gateway.url + "/v1/models")
    assert status == 200 and body["data"][0]["active"] is True


def test_chat_completion_and_the_same_streamed_chunk_by_chunk(client):
    whole = client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES, max_tokens=8)
    choice = whole.choices[0]
    assert whole.object == "chat.completion" and whole.model == "tiny-a.gguf"
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 8 and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 8
    chunks = list(
        client.chat.completions.create(
            model="tiny-a.gguf", messages=MESSAGES, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    content = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(content) >= 2, "the answer arrives in pieces, a chunk per token"
    assert "".join(chunk.choices[0].delta.content for chunk in content) == choice.message.content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "length" and all(reason is None for reason in finishes[:-1])
    assert chunks[-1].usage.completion_tokens == 8, "the usage chunk comes last"


def test_plain_completions_whole_and_streamed(client):
    answer = client.completions.create(model="tiny-a", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert answer.object == "text_completion" and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 5
    chunks = list(
        client.completions.create(
            model="tiny-a", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(chunk.object == "text_completion" for chunk in chunks)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == answer.choices[0].text
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "length" and all(reason is None for reason in finishes[:-1])
    assert chunks[-1].usage.completion_tokens == 5


def test_stop_sequences_end_the_answer_before_them(client):
    baseline = client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES, max_tokens=32)
    text = baseline.choices[0].message.content
    stop = text[1:3]
    assert len(text) > 4 and stop in text, "the baseline answer is long enough to hold the stop string"
    stopped = client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES, max_tokens=32, stop=[stop, "zz"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    assert stopped.usage.completion_tokens < 32
    pieces = client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES, max_tokens=32, stop=stop, stream=True)
    chunks = list(pieces)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == text[: text.index(stop)] and chunks[-1].choices[0].finish_reason == "stop"
    never = client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES, max_tokens=32, stop=["never here"])
    assert never.choices[0].message.content == text and never.choices[0].finish_reason == "length"


def test_eight_concurrent_requests_each_get_their_own_answer(client, tiny_gateway):
    def ask(tokens):
        answer = client.chat.completions.create(
            model="tiny-a.gguf", messages=[{"role": "user", "content": f"Question {tokens}"}], max_tokens=tokens
        )
        return tokens, answer.usage.completion_tokens, answer.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, range(5, 13)))
    assert results == [(tokens, tokens, "length") for tokens in range(5, 13)]
    assert metric(tiny_gateway.metrics(), "tessera_queue_depth") == 0


def test_a_client_leaving_mid_stream_cancels_its_request(client, tiny_gateway):
    before = metric(tiny_gateway.metrics(), "tessera_board_cancels_total")
    address = urllib.parse.urlsplit(tiny_gateway.url)
    connection = socket.create_connection((address.hostname, address.port), timeout=EVENT_DEADLINE)
    body = json.dumps({"model": "slow.gguf", "messages": MESSAGES, "max_tokens": 4096, "stream": True}).encode()
    connection.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = b""
    while received.count(b"data: ") < 3:
        data = connection.recv(4096)
        assert data, "the stream ended before three chunks"
        received += data
    assert received.startswith(b"HTTP/1.1 200")
    connection.close()

    def board_idle():
        text = tiny_gateway.metrics()
        return metric(text, "tessera_board_cancels_total") == before + 1 and metric(text, "tessera_queue_depth") == 0

    wait_until(board_idle, EVENT_DEADLINE, "the board to confirm the cancel and go idle")
    answer = client.chat.completions.create(model="slow.gguf", messages=MESSAGES[1:2], max_tokens=3)
    assert answer.usage.completion_tokens == 3, "the board serves the next request"


def test_malformed_and_hostile_requests_get_their_status_and_shape(tiny_gateway):
    path = "/v1/chat/completions"
    status, body = raw(tiny_gateway, "POST", path, b"{not json")
    assert status == 400
    assert_error_shape(body, code="invalid_json")
    status, body = raw(tiny_gateway, "POST", path, json.dumps({"messages": MESSAGES, "max_tokens": "many"}))
    assert status == 400
    assert_error_shape(body, param="max_tokens")
    status, body = raw(tiny_gateway, "POST", path, json.dumps({"messages": [{"role": "robot", "content": "x"}]}))
    assert status == 400
    assert_error_shape(body, param="messages[0].role")
    status, body = raw(tiny_gateway, "POST", "/v1/completions", json.dumps({"prompt": 42}))
    assert status == 400
    assert_error_shape(body, param="prompt")
    status, body = raw(tiny_gateway, "POST", path, b'{"messages":[{"role":"user","content":"' + b"x" * (2 << 20) + b'"}]}')
    assert status == 413
    assert_error_shape(body, code="request_too_large")
    long = json.dumps({"messages": [{"role": "user", "content": "y" * 20000}]})
    status, body = raw(tiny_gateway, "POST", path, long)
    assert status == 400
    assert_error_shape(body, code="context_length_exceeded")
    status, body = raw(tiny_gateway, "POST", path, json.dumps({"model": "no-such-model", "messages": MESSAGES}))
    assert status == 404
    assert_error_shape(body, code="model_not_found", param="model")
    status, body = raw(tiny_gateway, "GET", "/v1/nothing-here")
    assert status == 404
    assert_error_shape(body)
    status, body = raw(tiny_gateway, "GET", path)
    assert status == 405
    assert_error_shape(body)


def receive_until_closed(connection):
    """Everything the gateway sends on `connection` until it closes it (EOF)."""
    received = b""
    while True:
        data = connection.recv(4096)
        if not data:
            return received
        received += data


def assert_timed_out(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert_error_shape(json.loads(body), code="request_timeout")


def test_a_slow_loris_is_disconnected_and_does_not_disturb_other_clients(client, tiny_gateway):
    address = urllib.parse.urlsplit(tiny_gateway.url)
    loris = socket.create_connection((address.hostname, address.port), timeout=EVENT_DEADLINE)
    loris.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            try:
                loris.sendall(b"X-Slow: a\r\n")
            except OSError:
                return
            stop.wait(0.5)

    thread = threading.Thread(target=dribble)
    thread.start()
    try:
        for tokens in (2, 3):
            answer = client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES[1:2], max_tokens=tokens)
            assert answer.usage.completion_tokens == tokens
        assert get_json(tiny_gateway.url + "/health")[0] == 200
        # The gateway ends the connection itself (the header-read timeout), with a 408.
        answer = receive_until_closed(loris)
    finally:
        stop.set()
        thread.join()
        loris.close()
    assert_timed_out(answer)


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closed(client, tiny_gateway):
    address = urllib.parse.urlsplit(tiny_gateway.url)
    slow = socket.create_connection((address.hostname, address.port), timeout=EVENT_DEADLINE)
    try:
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"messages\":"
        )
        answer = receive_until_closed(slow)
    finally:
        slow.close()
    assert_timed_out(answer)
    assert client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES[1:2], max_tokens=2).usage.completion_tokens == 2


def test_oversized_and_malformed_heads_get_their_status_and_the_connection_closed(tiny_gateway):
    address = urllib.parse.urlsplit(tiny_gateway.url)
    heads = {
        b"GET /health HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n": 431,
        b"GET /health HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 100 + b"\r\n": 431,
        b"POST /v1/completions HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n": 400,
        b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n": 400,
    }
    for head, status in heads.items():
        connection = socket.create_connection((address.hostname, address.port), timeout=EVENT_DEADLINE)
        try:
            connection.sendall(head)
            answer = receive_until_closed(connection)
        finally:
            connection.close()
        first, _, body = answer.partition(b"\r\n\r\n")
        assert first.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
        assert_error_shape(json.loads(body))
    assert get_json(tiny_gateway.url + "/health")[0] == 200


def test_a_board_that_reboots_fails_requests_in_flight_with_503_then_serves_again(client, tiny_gateway):
    started = threading.Event()
    outcome = {}

    def long_request():
        try:
            stream = client.chat.completions.create(model="slow.gguf", messages=MESSAGES, max_tokens=4096, stream=True)
            for _ in stream:
                started.set()
            outcome["result"] = "finished"
        except openai.APIError as error:
            outcome["result"] = error
        started.set()

    thread = threading.Thread(target=long_request)
    thread.start()
    assert started.wait(EVENT_DEADLINE), "the long request never streamed"
    os.kill(tiny_gateway.qemu_pid(), signal.SIGKILL)
    thread.join(EVENT_DEADLINE)
    error = outcome.get("result")
    assert isinstance(error, openai.APIError) and "QEMU exited" in str(error.body or error), outcome
    tiny_gateway.wait_ready()
    answer = client.chat.completions.create(model="tiny-a.gguf", messages=MESSAGES[1:2], max_tokens=2)
    assert answer.usage.completion_tokens == 2
    assert metric(tiny_gateway.metrics(), "tessera_board_connections_total") == 2
