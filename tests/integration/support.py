"""The integration fixture is a process (shared/STYLE.md §2 item 12): `GatewayServer` runs the real
`python -m gateway serve` on a free loopback port with its output in a log file, polls `/health` until the model
is loaded, fails at once with the end of that log if the child dies, and terminates (then kills) it on teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
ALIAS = "gpt-4o-mini"
N_CTX = 2048
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

DEFAULT_CONFIG: dict[str, Any] = {
    "aliases": {ALIAS: MODEL},
    "parallel": 8,
    "n_ctx": N_CTX,
}


def free_port() -> int:
    """A port the kernel just handed out on loopback; the tiny window before the child binds it is accepted."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every descendant of `pid` (the worker and its runner processes), from /proc."""
    found, frontier = set(), {pid}
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            frontier |= kids - found
            found |= kids
    return found


class GatewayServer:
    """`with GatewayServer(tmp_dir, config) as server:` runs the real gateway for the block's duration."""

    def __init__(self, work_dir: Path, config: dict[str, Any] | None = None, extra_args: list[str] | None = None,
                 log_level: str = "warning", startup_timeout: float = STARTUP_TIMEOUT,
                 env: dict[str, str] | None = None):
        self.work_dir = Path(work_dir)
        self.env = dict(env or {})
        self.config = dict(DEFAULT_CONFIG if config is None else config)
        self.extra_args = list(extra_args or [])
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.port = 0
        self.url = ""
        self.log_path = self.work_dir / "gateway.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> GatewayServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.work_dir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", self.log_level, "--config", str(config_path), *self.extra_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}  # only our settings count
        env["OLLAMA_MODELS"] = str(self.work_dir / "ollama-models")  # never the user's own store
        env.update(self.env)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(f"the gateway exited with status {code} before it was healthy:\n{self.log_tail()}")
            try:
                r = requests.get(self.url + "/health", timeout=2)
                if r.status_code == 200 and r.json().get("models_loaded"):
                    return
                last_error = f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as exc:
                last_error = repr(exc)
            time.sleep(0.2)
        pytest.fail(f"the gateway was not healthy after {self.startup_timeout:.0f}s ({last_error}):\n"
                    f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- helpers ---------------------------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the server and every process under it (worker, runners): a crash, not a shutdown."""
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("timeout", 120.0)
        return openai.OpenAI(base_url=self.url + "/v1", api_key="test", max_retries=0, **kwargs)
