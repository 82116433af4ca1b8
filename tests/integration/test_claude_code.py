"""Claude Code, the real `claude` CLI (npm `@anthropic-ai/claude-code`), run headless against the real gateway:
every request a `claude -p` run makes must be accepted and answered in a shape it can use, and a prompt larger
than the window must come back in the words Claude Code acts on.

Claude Code's default system prompt and context add up to 7,600 (2.1.197) to 9,000 (2.1.330) tokens with this
model's template, which does not render tools, and take minutes to read on a small CPU (or do not fit the 8192
tokens SmolLM2 was trained on at all), so the runs use `--bare` with a short
`--system-prompt` and no tools: about 120 prompt tokens. Claude Code sends no `temperature` and a `max_tokens` of
32000 (clipped to the window), so the served model gets a default temperature of 0 and a question whose greedy
answer is short ("2 + 2 = 4."): it ends by itself on every run. Older versions put today's date in the prompt,
and "Say hi" loops on until the window on a few dates out of a hundred; this question ended in 8 tokens or fewer
on each of 67 dates over two years.

A third run gives Claude Code one tool (Read) and a model configured with `tool_choice: required`, so every answer
is a call: a recording proxy in front of the gateway checks the protocol round trip (the tools in the request, a
`tool_use` block in the answer, the `tool_result` in the next request). Read's schema and description take the
prompt to about 500 tokens, so that model has a window of its own.

Skipped only when the `claude` binary is not on PATH.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from gateway.models.embedded import embedded_model_path
from tests.integration.support import GatewayServer
from tests.system_tools import require_tool

pytestmark = pytest.mark.integration

CLAUDE_BIN = shutil.which("claude")
GREEDY = "smollm2-greedy"
AGENT = "smollm2-agent"  # the same file, configured so that every answer to a request with tools is a call
CLAUDE_MODEL = "claude-sonnet-4-5"
AGENT_CLAUDE_MODEL = "claude-haiku-4-5"  # an exact alias of AGENT, which wins over the `claude-*` glob
WINDOW = 1024
AGENT_WINDOW = 4096
RUN_TIMEOUT = 180
MESSAGE_ID = re.compile(r"msg_([0-9a-f]{24})")  # our request id, as the gateway makes it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    require_tool(CLAUDE_BIN, "the `claude` CLI is not installed (npm install -g @anthropic-ai/claude-code)")
    config = {
        "embedded_model": False,
        "models": [{"name": GREEDY, "path": embedded_model_path(), "parameters": {"temperature": 0}},
                   {"name": AGENT, "path": embedded_model_path(), "parameters": {"temperature": 0},
                    "tool_choice": "required", "n_ctx": AGENT_WINDOW, "parallel": 1}],
        "aliases": {AGENT_CLAUDE_MODEL: AGENT, "claude-*": GREEDY},
        "n_ctx": WINDOW,
        "parallel": 2,
    }
    with GatewayServer(tmp_path_factory.mktemp("gateway-claude-code"), config) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


def run_claude(server: GatewayServer | RecordingProxy, home: Path, prompt: str, model: str = CLAUDE_MODEL,
               tools: str = "", *options: str) -> tuple[int, list[dict[str, Any]], str]:
    """`claude -p` with stream-json output; (exit status, events, stderr). Its environment is built from nothing
    but PATH, so no login, setting or key of the user's reaches it, and nothing but the gateway is called."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "test",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    cmd = [CLAUDE_BIN, "-p", prompt, "--model", model, "--bare", "--system-prompt", "You are brief.",
           "--tools", tools, "--no-session-persistence", "--output-format", "stream-json", "--verbose", *options]
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, cwd=home, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events, done.stderr


def only(events: list[dict[str, Any]], kind: str, subtype: str | None = None) -> dict[str, Any]:
    """The one event of a type (and subtype): newer versions add events of their own around them."""
    found = [event for event in events if event["type"] == kind and subtype in (None, event.get("subtype"))]
    assert len(found) == 1, f"expected one {kind!r} event, got {len(found)}: {events}"
    return found[0]


def test_print_mode_runs_end_to_end(server: GatewayServer, tmp_path: Path) -> None:
    status, events, stderr = run_claude(server, tmp_path / "home", "What is 2+2?")
    assert status == 0, f"claude exited with {status}: {stderr}\n{events}\n{server.log_tail()}"
    assert only(events, "system", "init")["model"] == CLAUDE_MODEL
    assistant = only(events, "assistant")
    message = assistant["message"]
    match = MESSAGE_ID.fullmatch(message["id"])
    assert match, f"not a message of this gateway: {message}"
    assert assistant["request_id"] == match.group(1)  # the `request-id` header of our answer
    assert message["model"] == CLAUDE_MODEL
    text = message["content"][0]["text"]
    result = only(events, "result")
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["stop_reason"] == "end_turn" and result["result"] == text and text
    assert result["usage"]["output_tokens"] > 0 and result["usage"]["input_tokens"] > 0


def test_a_prompt_over_the_window_is_reported_as_too_long(server: GatewayServer, tmp_path: Path) -> None:
    """Claude Code reads the token counts out of "prompt is too long: N tokens > M maximum" and stops: a
    single-exchange conversation cannot be compacted."""
    status, events, stderr = run_claude(server, tmp_path / "home", "word " * (WINDOW + 500))
    assert status == 1, f"claude exited with {status}: {stderr}\n{events}"
    result = only(events, "result")
    assert result["is_error"] is True and result["api_error_status"] == 400
    assert result["result"].startswith("Prompt is too long") and f"(limit {WINDOW})" in result["result"]
    assert server.alive()


class RecordingProxy:
    """A pass-through HTTP proxy in front of the gateway that keeps each request's method, path and JSON body:
    what Claude Code sent, which the gateway's own records do not hold. Answers are passed on as they arrive
    (streams included), closed by end of connection (HTTP/1.0)."""

    def __init__(self, target: GatewayServer):
        self.requests: list[tuple[str, str, Any]] = []
        port = target.port
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    recorded.append((self.command, self.path, json.loads(body) if body else None))
                except ValueError:
                    recorded.append((self.command, self.path, body))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=RUN_TIMEOUT)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    self.end_headers()
                    while chunk := answer.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                finally:
                    upstream.close()

            do_GET = do_POST = do_HEAD = forward

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def messages(self) -> list[dict[str, Any]]:
        """The bodies of the Messages API calls, in order (token counting and other calls left out)."""
        return [body for method, path, body in self.requests if method == "POST" and path.split("?")[0] ==
                "/v1/messages"]


def test_a_tool_call_round_trips(server: GatewayServer, tmp_path: Path) -> None:
    """With one allowed tool (Read) and two turns: request 1 carries the tool, the gateway answers with a
    `tool_use` block (streamed), Claude Code runs it and sends its `tool_result` in request 2, which is answered
    with a call again, and the run stops at the turn limit."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("The meeting is on Tuesday.\n")
    with RecordingProxy(server) as proxy:
        status, events, stderr = run_claude(proxy, home, "Read the file notes.txt.", AGENT_CLAUDE_MODEL, "Read",
                                            "--allowedTools", "Read", "--max-turns", "2")
    context = f"claude exited with {status}: {stderr}\n{events}\n{server.log_tail()}"
    sent = proxy.messages()
    assert len(sent) == 2, f"expected two Messages API calls, got {proxy.requests}\n{context}"
    first, second = sent
    for body in sent:
        assert body["model"] == AGENT_CLAUDE_MODEL and body["stream"] is True
        assert [tool["name"] for tool in body["tools"]] == ["Read"], body["tools"]
        assert body["tools"][0]["input_schema"]["properties"]["file_path"]

    # Claude Code printed what the gateway answered: each assistant message holds the one call, ids our own
    calls = [event["message"] for event in events if event["type"] == "assistant"]
    assert len(calls) == 2, context
    for message in calls:
        assert MESSAGE_ID.fullmatch(message["id"]), message
        assert message["model"] == AGENT_CLAUDE_MODEL
        [block] = message["content"]
        assert block["type"] == "tool_use" and block["name"] == "Read", message
        assert isinstance(block["input"], dict) and isinstance(block["input"]["file_path"], str), block
        assert block["id"]

    # request 2 replays the first call as Claude Code received it and answers it with a tool_result
    assistant_turn, result_turn = second["messages"][-2:]
    assert assistant_turn["role"] == "assistant"
    [replayed] = [block for block in assistant_turn["content"] if block["type"] == "tool_use"]
    first_call = calls[0]["content"][0]
    assert (replayed["id"], replayed["name"], replayed["input"]) == (first_call["id"], "Read", first_call["input"])
    assert result_turn["role"] == "user"
    results = [block for block in result_turn["content"] if block["type"] == "tool_result"]
    assert [block["tool_use_id"] for block in results] == [first_call["id"]], result_turn
    assert len(second["messages"]) == len(first["messages"]) + 2

    # the stream-json transcript shows the same exchange: call, result, call, result
    turns = [event for event in events if event["type"] in ("assistant", "user")]
    assert [event["type"] for event in turns] == ["assistant", "user", "assistant", "user"], context
    for call, answer in zip(turns[::2], turns[1::2], strict=True):
        [result] = answer["message"]["content"]
        assert result["type"] == "tool_result" and result["tool_use_id"] == call["message"]["content"][0]["id"]

    # and the gateway's own records: two calls of the agent model, ended by a tool call, under the same ids
    records = {record["id"]: record for record in requests.get(server.url + "/api/requests").json()["requests"]}
    for message in calls:
        record = records[MESSAGE_ID.fullmatch(message["id"]).group(1)]
        assert record["model"] == AGENT and record["api"] == "anthropic" and record["stream"] is True
        assert record["status"] == "completed" and record["finish_reason"] == "tool_calls", record
    result = only(events, "result")
    assert result["subtype"] == "error_max_turns" and result["stop_reason"] == "tool_use", result
    assert status == 1, context

