"""`tessera serve` at the board's limits, against QEMU boards: a conversation of several KiB
answered (and ones past the limits refused with 400 `context_length_exceeded`), the board's
waiting queue filled (429), and a board that falls silent (504), after each of which the
gateway serves again.

long.img holds long.gguf (a small model with an 8192-token context, the default) and slow.gguf,
with an 8192-token KV quota; silent.img is a copy of the tiny card, for a board stopped with
SIGSTOP under a gateway whose deadline is short.
"""

import json
import os
import random
import select
import signal
import socket
import urllib.parse

import openai
import pytest

from conftest import EVENT_DEADLINE, SILENT_DEADLINE_SECONDS, metric, wait_until
from test_gateway import assert_error_shape, raw

PATH = "/v1/chat/completions"


def client_of(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", timeout=EVENT_DEADLINE, max_retries=0)


def conversation(content_bytes, seed=1):
    """A system message and alternating user and assistant turns of about `content_bytes` bytes
    of text in all, ending with a user turn."""
    words = "the board reads a long conversation and answers after many turns about cats dogs and trains".split()
    chooser = random.Random(seed)
    messages = [{"role": "system", "content": "You answer briefly."}]
    total = len(messages[0]["content"])
    while total < content_bytes:
        role = "user" if len(messages) % 2 == 1 else "assistant"
        text = " ".join(chooser.choice(words) for _ in range(60))
        messages.append({"role": role, "content": text})
        total += len(text)
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": "And then?"})
    return messages


def test_a_conversation_of_several_kib_is_answered(long_gateway):
    messages = conversation(4500)
    line_bytes = len(json.dumps({"messages": messages}))
    assert line_bytes > 4 * 1024, "more than four times the board's old 1024-byte line"
    answer = client_of(long_gateway).chat.completions.create(model="long.gguf", messages=messages, max_tokens=4)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 4
    # The whole conversation reached the model: thousands of prompt tokens, not a cut one.
    assert answer.usage.prompt_tokens > 2000, answer.usage


def test_conversations_past_the_limits_get_context_length_exceeded(long_gateway):
    # Past the board's 12 KiB of conversation text but within its 16 KiB line: the board refuses.
    status, body = raw(long_gateway, "POST", PATH, json.dumps({"messages": conversation(13 * 1024), "max_tokens": 4}))
    assert status == 400
    assert_error_shape(body, code="context_length_exceeded")
    assert "longer than" in body["error"]["message"]
    # Past the 16 KiB line: the gateway refuses before the board sees it.
    status, body = raw(long_gateway, "POST", PATH, json.dumps({"messages": conversation(20 * 1024), "max_tokens": 4}))
    assert status == 400
    assert_error_shape(body, code="context_length_exceeded", param="messages")
    assert "16384" in body["error"]["message"]
    assert get_health(long_gateway) == 200


def get_health(gateway):
    status, _ = raw(gateway, "GET", "/health")
    return status


class StreamingClient:
    """One raw streaming request on its own socket: the status of its answer once it comes."""

    def __init__(self, gateway, body):
        address = urllib.parse.urlsplit(gateway.url)
        self.socket = socket.create_connection((address.hostname, address.port), timeout=EVENT_DEADLINE)
        self.socket.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.received = b""
        self.closed = False

    def read_waiting(self):
        """Reads what has arrived, without waiting."""
        while not self.closed and select.select([self.socket], [], [], 0)[0]:
            data = self.socket.recv(65536)
            if not data:
                self.closed = True
            self.received += data

    def status(self):
        if not self.received.startswith(b"HTTP/1.1 "):
            return None
        return int(self.received[9:12])


def test_a_full_waiting_queue_is_429_then_the_board_serves_again(long_gateway):
    """More long requests on slow.gguf than the board holds (64 running at most, 128 waiting):
    the ones past its queue get 429; the rest are on the board until their clients leave."""
    client = client_of(long_gateway)
    client.chat.completions.create(model="slow.gguf", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    body = json.dumps(
        {"model": "slow.gguf", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 4096, "stream": True}
    ).encode()
    total = 64 + 128 + 16
    clients = []
    try:
        for _ in range(total):
            clients.append(StreamingClient(long_gateway, body))

        def every_request_placed():
            for streaming in clients:
                streaming.read_waiting()
            refused = [streaming for streaming in clients if streaming.status() == 429]
            in_flight = metric(long_gateway.metrics(), "tessera_queue_depth")
            return refused if refused and len(refused) + in_flight == total else None

        refused = wait_until(every_request_placed, EVENT_DEADLINE, "each request refused or on the board")
        assert len(refused) >= 16, "at least the requests past 64 running and 128 waiting"
        for streaming in refused:
            _, _, answer = streaming.received.partition(b"\r\n\r\n")
            assert_error_shape(json.loads(answer), code="board_queue_full")
        statuses = {streaming.status() for streaming in clients}
        assert statuses <= {200, 429, None}, statuses
    finally:
        for streaming in clients:
            streaming.socket.close()
    # Every client left: the board cancels them all and serves the next request.
    wait_until(
        lambda: metric(long_gateway.metrics(), "tessera_queue_depth") == 0, EVENT_DEADLINE, "the board to go idle"
    )
    answer = client.chat.completions.create(model="slow.gguf", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert answer.usage.completion_tokens == 2
    text = long_gateway.metrics()
    assert metric(text, 'tessera_requests_total{endpoint="/v1/chat/completions",status="429"}') == len(refused)


def test_a_board_that_falls_silent_is_504_then_the_gateway_serves_again(silent_gateway):
    client = client_of(silent_gateway)
    question = [{"role": "user", "content": "Hello there"}]
    assert client.chat.completions.create(model="tiny-a.gguf", messages=question, max_tokens=2).usage.completion_tokens == 2
    pid = silent_gateway.qemu_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        status, body = raw(silent_gateway, "POST", PATH, json.dumps({"messages": question, "max_tokens": 2}))
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pytest.fail(f"QEMU (pid {pid}) exited while stopped or before; its reason is in {silent_gateway.stderr_path}")
    assert status == 504
    assert_error_shape(body, code="board_timeout")
    assert f"{SILENT_DEADLINE_SECONDS} s" in body["error"]["message"]
    # The same board, woken: the request given up on is cancelled, the next one answered.
    answer = client.chat.completions.create(model="tiny-a.gguf", messages=question, max_tokens=3)
    assert answer.usage.completion_tokens == 3
    wait_until(
        lambda: metric(silent_gateway.metrics(), "tessera_queue_depth") == 0, EVENT_DEADLINE, "the board to go idle"
    )
    assert silent_gateway.qemu_pid() == pid, "the same QEMU, never rebooted"


def process_gone(pid):
    """Whether process `pid` has exited (a zombie not yet reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return True


def test_the_gateway_stops_its_qemu_when_it_exits(silent_gateway):
    pid = silent_gateway.qemu_pid()
    assert pid and not process_gone(pid)
    silent_gateway.process.send_signal(signal.SIGTERM)
    silent_gateway.process.wait(timeout=EVENT_DEADLINE)
    wait_until(lambda: process_gone(pid), EVENT_DEADLINE, f"QEMU (pid {pid}) to stop with its gateway")
