"""Fixtures of the gateway tests: `tessera serve --qemu` over an SD card, started once per card.

Environment (set by tests/gateway/run.sh): TESSERA_BIN (the tessera binary), TESSERA_KERNEL
(kernel8.img), TESSERA_TINY_CARD (a card with small synthetic models), TESSERA_SILENT_CARD and
TESSERA_SERIAL_CARD (copies of it), TESSERA_LONG_CARD (a model with a long context and slow.gguf) and
TESSERA_SMOLLM2_CARD (a card with SmolLM2). Every wait is on an event with a generous deadline, never a fixed sleep.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

# Generous deadlines: the machine is shared and QEMU may get a fraction of a core.
BOOT_DEADLINE = 600
EVENT_DEADLINE = 300


def wait_until(condition, deadline, what):
    """Polls `condition` until it returns a true value or `deadline` seconds pass."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.2)


def get_json(url, timeout=60):
    """(status, JSON body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def get_text(url, timeout=60):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def metric(text, name):
    """The value of the Prometheus sample `name` (with its labels) in `text`."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} is not in /metrics")


class Gateway:
    """A running `tessera serve --qemu`."""

    def __init__(self, card, log_name, extra_arguments=(), deadline=600, serial=None):
        """Boots `card` in QEMU through the gateway, or, given `serial`, talks to the board
        already on that serial device."""
        build = os.path.dirname(card)
        self.board_log = os.path.join(build, f"{log_name}-board.log")
        self.stderr_path = os.path.join(build, f"{log_name}-serve.log")
        self.stderr = open(self.stderr_path, "w")
        board = ["--serial", serial] if serial else ["--qemu", "--kernel", os.environ["TESSERA_KERNEL"], "--sd", card]
        self.process = subprocess.Popen(
            [
                os.environ["TESSERA_BIN"], "serve", *board,
                "--listen", "127.0.0.1:0", "--board-log", self.board_log,
                "--deadline", str(deadline),
                *extra_arguments,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stderr.readline()
        match = re.search(r"listening on (http://[0-9.:]+)", line)
        assert match, f"the gateway did not start: {line!r}"
        self.url = match.group(1)
        # Keep reading the gateway's stderr into a file so its pipe never fills.
        self.copier = subprocess.Popen(["cat"], stdin=self.process.stderr, stdout=self.stderr)
        self.wait_ready()

    def wait_ready(self):
        def ready():
            try:
                status, body = get_json(self.url + "/health", timeout=10)
            except OSError:
                return None
            return body if status == 200 else None

        self.health = wait_until(ready, BOOT_DEADLINE, "the board to boot and serve")
        return self.health

    def qemu_pid(self):
        return get_json(self.url + "/health")[1].get("qemu_pid")

    def metrics(self):
        return get_text(self.url + "/metrics")

    def stop(self):
        pid = None
        try:
            pid = self.qemu_pid()
        except OSError:
            pass
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.copier.wait(timeout=60)
        self.stderr.close()


# The tiny board's gateway gives request heads and bodies only a few seconds, so that the
# slow-client tests see it disconnect them without a long wait (every client of the other
# tests sends its whole request at once).
CLIENT_TIMEOUT_SECONDS = 3


@pytest.fixture(scope="session")
def tiny_gateway():
    timeouts = ["--header-timeout", str(CLIENT_TIMEOUT_SECONDS), "--body-timeout", str(CLIENT_TIMEOUT_SECONDS)]
    gateway = Gateway(os.environ["TESSERA_TINY_CARD"], "tiny", timeouts)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def long_gateway():
    gateway = Gateway(os.environ["TESSERA_LONG_CARD"], "long")
    yield gateway
    gateway.stop()


# The gateway of a board that the 504 test stops: it gives the board this many seconds per
# record (the tiny model answers its first record well within them even on a busy machine).
SILENT_DEADLINE_SECONDS = 15


@pytest.fixture
def silent_gateway():
    gateway = Gateway(os.environ["TESSERA_SILENT_CARD"], "silent", deadline=SILENT_DEADLINE_SECONDS)
    yield gateway
    gateway.stop()


class PtyBoard:
    """QEMU booting `card` with its serial console on a pseudo-terminal, as a real board's
    USB-serial adapter would be: `device` is the terminal's path."""

    def __init__(self, card):
        self.log = open(os.path.join(os.path.dirname(card), "serial-qemu.log"), "w")
        self.process = subprocess.Popen(
            [
                os.environ.get("QEMU", "qemu-system-aarch64"), "-M", "raspi3b", "-display", "none",
                "-monitor", "none", "-serial", "pty", "-kernel", os.environ["TESSERA_KERNEL"],
                "-drive", f"file={card},if=sd,format=raw",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        # QEMU names the terminal on stdout before the guest starts (and prints nothing more
        # there); its stderr goes to a log.
        line = self.process.stdout.readline()
        match = re.search(r"redirected to (/dev/pts/[0-9]+)", line)
        if not match:
            self.stop()
            raise AssertionError(f"QEMU gave no pseudo-terminal: {line!r}")
        self.device = match.group(1)

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.log.close()


@pytest.fixture
def serial_gateway():
    board = PtyBoard(os.environ["TESSERA_SERIAL_CARD"])
    try:
        gateway = Gateway(os.environ["TESSERA_SERIAL_CARD"], "serial", serial=board.device)
    except BaseException:
        board.stop()
        raise
    yield gateway
    gateway.stop()
    board.stop()


@pytest.fixture(scope="session")
def smollm2_gateway():
    gateway = Gateway(os.environ["TESSERA_SMOLLM2_CARD"], "smollm2")
    yield gateway
    gateway.stop()
