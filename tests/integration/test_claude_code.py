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

Skipped only when the `claude` binary is not on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway.models.embedded import embedded_model_path
from tests.integration.support import GatewayServer
from tests.system_tools import require_tool

pytestmark = pytest.mark.integration

CLAUDE_BIN = shutil.which("claude")
GREEDY = "smollm2-greedy"
CLAUDE_MODEL = "claude-sonnet-4-5"
WINDOW = 1024
RUN_TIMEOUT = 180
MESSAGE_ID = re.compile(r"msg_([0-9a-f]{24})")  # our request id, as the gateway makes it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    require_tool(CLAUDE_BIN, "the `claude` CLI is not installed (npm install -g @anthropic-ai/claude-code)")
    config = {
        "embedded_model": False,
        "models": [{"name": GREEDY, "path": embedded_model_path(), "parameters": {"temperature": 0}}],
        "aliases": {"claude-*": GREEDY},
        "n_ctx": WINDOW,
        "parallel": 2,
    }
    with GatewayServer(tmp_path_factory.mktemp("gateway-claude-code"), config) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


def run_claude(server: GatewayServer, home: Path, prompt: str) -> tuple[int, list[dict[str, Any]], str]:
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
    cmd = [CLAUDE_BIN, "-p", prompt, "--model", CLAUDE_MODEL, "--bare", "--system-prompt", "You are brief.",
           "--tools", "", "--no-session-persistence", "--output-format", "stream-json", "--verbose"]
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
