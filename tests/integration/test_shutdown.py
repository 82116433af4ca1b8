"""SIGTERM: a stream that ends within the grace period ends as usual, one that would run past it gets its
family's final error frame instead of a cut connection, and the server stops its runners and exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer, descendants
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

GRACE = 4.0


def stream(server: GatewayServer, tokens: int, lines: list[str], started: threading.Event) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a story."}], "stream": True,
            "max_tokens": tokens, "min_tokens": tokens}
    with requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as response:
        for line in response.iter_lines(decode_unicode=True):
            if line:
                lines.append(line)
                started.set()


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_finishes_short_streams_ends_long_ones_with_an_error_frame_and_exits_0(tmp_path: Path) -> None:
    with GatewayServer(tmp_path, {**DEFAULT_CONFIG, "shutdown_grace": GRACE}) as server:
        processes = descendants(server.proc.pid)
        assert len(processes) >= 2  # the worker and the model's runner
        short, long = [], []
        short_started, long_started = threading.Event(), threading.Event()
        threads = [threading.Thread(target=stream, args=(server, 40, short, short_started)),
                   threading.Thread(target=stream, args=(server, 1900, long, long_started))]
        for thread in threads:
            thread.start()
        assert short_started.wait(30) and long_started.wait(30)
        server.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        for thread in threads:
            thread.join(timeout=60)
        assert server.proc.wait(timeout=30) == 0, server.log_tail()
        assert time.monotonic() - sent >= GRACE - 0.5  # the long stream was given its grace period
        assert short[-1] == "data: [DONE]", short[-3:]
        assert json.loads(short[-2][len("data: "):])["choices"][0]["finish_reason"] == "length", short[-3:]
        assert long[-1] == "data: [DONE]", long[-3:]
        last = json.loads(long[-2][len("data: "):])
        assert last["error"]["message"] == "The server is shutting down.", long[-3:]
        # orphans are reaped by init: give it a moment; no runner may be left behind
        wait_for(lambda: not any(running(pid) for pid in processes), "every runner to be gone")
