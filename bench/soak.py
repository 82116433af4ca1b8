"""A soak: the real gateway under mixed valid and hostile traffic from all five API families for a long while.

Why: tests check one hostile input at a time on a fresh server. A leak (a thread per hung-up stream, a file
descriptor per refused body, a record per request that is never dropped) only shows after thousands of them,
and a 5xx or a hang may need one request to meet another. This is not a test: run it by hand when the machine
is quiet and record its figures in bench/README.md.

What it does: starts `python -m gateway serve` itself (its own process group, a temporary config: parallel 4,
n_ctx 2048, send_timeout 5, an empty Ollama store), warms every valid request kind up once, then for `--minutes`
runs `--workers` threads that each loop over a weighted random choice (seeded) of request kinds:

* valid requests (OpenAI, Ollama, Anthropic, TGI, vLLM, tool calls, JSON schema output), expected 2xx;
* hostile requests (NaN / Infinity / 1e999, raw lone surrogates, 10,000 `[`, a 16 MiB model name, wrong types
  in sampling fields, bad keep_alive, unknown models, stop lists past the limit, a schema with `not`, invalid
  GBNF, cross-site POSTs and a foreign Host), expected 4xx;
* hostile clients: a stream hung up after its first chunk (expected 2xx: the status came first), a stream never
  read through a tiny receive buffer and closed after 10 s, a body shorter than its Content-Length, garbage
  bytes (expected 4xx or the connection closed).

Any 5xx, timeout, connection error or other unexpected outcome is a failure and is listed with its request. The
API processes (gunicorn master and worker) and every runner process are sampled after the warm-up, every minute
and at the end: RSS, threads and open file descriptors from /proc, plus /health latency and the size of
/api/requests. It prints Markdown tables and writes everything to bench/results/soak-<timestamp>.json. The
server is stopped on exit, Ctrl-C or SIGTERM (SIGTERM to its process group, then SIGKILL).

Run (Linux only, from the repository root):
    .venv/bin/python bench/soak.py                              # 30 minutes, 6 workers
    .venv/bin/python bench/soak.py --minutes 2 --workers 4      # smoke run
Options: --minutes, --workers, --seed, --port (default: a free one), --keep-server-log (copy the server's log
next to the JSON). The exit status is 1 when there were failures or the server died.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
MODEL = "smollm2-135m-instruct"
HOST = "127.0.0.1"
GEN_TIMEOUT = 60.0  # seconds for a request that generates
CHEAP_TIMEOUT = 20.0  # seconds for one that does not
STALL_SECONDS = 10.0
STARTUP_TIMEOUT = 120.0
SAMPLE_EVERY = 60.0
HI = [{"role": "user", "content": "Say hi."}]
ANTHROPIC = {"anthropic-version": "2023-06-01"}
EVIL = "https://evil.example"
SERVER_CONFIG: dict[str, Any] = {"parallel": 4, "n_ctx": 2048, "send_timeout": 5, "log_level": "warning"}
HUGE_NAME_BODY = json.dumps({"model": "m" * (16 * 1024 * 1024), "messages": HI}).encode()


@dataclass(frozen=True)
class Request:
    """One HTTP request: `body` is sent as is (bytes), or JSON-encoded."""

    method: str
    path: str
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    stream: bool = False
    timeout: float = CHEAP_TIMEOUT

    def encoded(self) -> bytes | None:
        if self.body is None or isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()

    def describe(self) -> str:
        body = self.encoded() or b""
        shown = body[:300].decode("utf-8", "backslashreplace") + (f"... ({len(body)} bytes)" if len(body) > 300
                                                                  else "")
        return f"{self.method} {self.path} {dict(self.headers)} {shown}"


@dataclass(frozen=True)
class Kind:
    """A kind of request: `make` builds it from the RNG, `send` sends it and returns its outcome."""

    name: str
    family: str
    expect: tuple[str, ...]  # outcomes that pass: "2xx", "4xx", "closed", "held"
    weight: float
    make: Callable[[random.Random], Request]
    send: Callable[[int, Request], str]


# -- transports: each returns an outcome, a status code as text or "closed" / "held" / "timeout" / "error:..." --

def _send(port: int, req: Request, whole: bool) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=req.timeout)
    try:
        conn.request(req.method, req.path, body=req.encoded(), headers=dict(req.headers))
        resp = conn.getresponse()
        resp.read() if whole else resp.readline()
        return str(resp.status)
    finally:
        conn.close()


def send_whole(port: int, req: Request) -> str:
    """Send the request, read the whole answer (a stream to its end)."""
    return _send(port, req, whole=True)


def send_hang_up(port: int, req: Request) -> str:
    """Send a streaming request, read the status and one line of the body, then close the connection."""
    return _send(port, req, whole=False)


def raw_request(req: Request, content_length: int | None = None) -> bytes:
    body = req.encoded() or b""
    length = len(body) if content_length is None else content_length
    head = (f"{req.method} {req.path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n")
    return head.encode() + body


def status_of(data: bytes) -> str:
    """The status code of a raw HTTP answer, or "closed" when none came."""
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return parts[1].decode()
    return "closed"


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def send_stalled(port: int, req: Request) -> str:
    """A streaming request from a socket with a tiny receive buffer that is never read, closed after 10 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.settimeout(req.timeout)
        sock.connect((HOST, port))
        sock.sendall(raw_request(req))
        time.sleep(STALL_SECONDS)
        first = sock.recv(64)
        if status_of(first) != "200":
            return status_of(first)
        try:
            read_until_closed(sock, 2.0)
        except TimeoutError:
            return "held"  # the server still holds the stream after 10 s (send_timeout is 5 s)
        return "closed"  # the server gave up on the reader and closed the connection


def send_truncated(port: int, req: Request) -> str:
    """A body 1000 bytes shorter than its Content-Length; the sending side is then shut."""
    with socket.create_connection((HOST, port), timeout=req.timeout) as sock:
        sock.sendall(raw_request(req, content_length=len(req.encoded() or b"") + 1000))
        sock.shutdown(socket.SHUT_WR)
        return status_of(read_until_closed(sock, req.timeout))


def send_oversized(port: int, req: Request) -> str:
    """A body the server may refuse before it has all arrived: a failed send still reads the answer."""
    with socket.create_connection((HOST, port), timeout=req.timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw_request(req))
        return status_of(read_until_closed(sock, req.timeout))


def send_garbage(port: int, req: Request) -> str:
    """The request's body bytes alone, as if they were an HTTP request."""
    with socket.create_connection((HOST, port), timeout=req.timeout) as sock:
        sock.sendall(req.encoded() or b"")
        sock.shutdown(socket.SHUT_WR)
        return status_of(read_until_closed(sock, req.timeout))


def outcome_of(kind: Kind, port: int, req: Request) -> str:
    try:
        return kind.send(port, req)
    except TimeoutError:
        return "timeout"
    except (OSError, http.client.HTTPException) as exc:
        return f"error:{type(exc).__name__}"


def passes(kind: Kind, outcome: str) -> bool:
    klass = outcome[0] + "xx" if outcome.isdigit() else outcome
    return klass in kind.expect


# -- request builders ---------------------------------------------------------------------------------------

def post(path: str, body: Any, *, stream: bool = False, gen: bool = True, headers: dict[str, str] | None = None,
         ) -> Request:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return Request("POST", path, body, tuple(hdrs.items()), stream, GEN_TIMEOUT if gen else CHEAP_TIMEOUT)


def get(path: str) -> Request:
    return Request("GET", path)


def raw_json(path: str, text: str, headers: dict[str, str] | None = None) -> Request:
    """A body written as JSON text by hand, for values json.dumps would never write."""
    return post(path, text.encode(), gen=False, headers=headers)


def openai_chat(stream: bool, **extra: Any) -> Request:
    return post("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 16, "stream": stream,
                                         **extra}, stream=stream)


def ollama(path: str, stream: bool, **extra: Any) -> Request:
    body = {"model": MODEL, "stream": stream, "options": {"num_predict": 16}, **extra}
    body.update({"messages": HI} if path == "/api/chat" else {"prompt": "Say hi."})
    return post(path, body, stream=stream)


def claude(stream: bool, **extra: Any) -> Request:
    return post("/v1/messages", {"model": MODEL, "messages": HI, "max_tokens": 16, "stream": stream, **extra},
                stream=stream, headers=ANTHROPIC)


def tgi(path: str, **parameters: Any) -> Request:
    return post(path, {"inputs": "Say hi.", "parameters": {"max_new_tokens": 16, **parameters}},
                stream=path == "/generate_stream")


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}


def valid_kinds() -> list[Kind]:
    def v(name: str, family: str, weight: float, make: Callable[[random.Random], Request]) -> Kind:
        return Kind(name, family, ("2xx",), weight, make, send_whole)

    return [
        v("openai.chat", "openai", 3, lambda r: openai_chat(False, temperature=r.random())),
        v("openai.chat.stream", "openai", 3, lambda r: openai_chat(True, temperature=r.random())),
        v("openai.completions", "openai", 2, lambda r: post("/v1/completions", {
            "model": MODEL, "prompt": "Once upon a time", "max_tokens": 16, "stream": r.random() < 0.5})),
        v("openai.embeddings", "openai", 2, lambda r: post("/v1/embeddings", {
            "model": MODEL, "input": ["hello", "world"][: r.randint(1, 2)]}, gen=False)),
        v("openai.models", "openai", 1, lambda r: get("/v1/models")),
        v("openai.tools.required", "openai", 2, lambda r: openai_chat(
            False, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=32,
            messages=[{"role": "user", "content": "Weather in Paris?"}])),
        v("openai.json_schema", "openai", 2, lambda r: openai_chat(
            False, max_tokens=32, response_format={"type": "json_schema", "json_schema": {
                "name": "city", "schema": CITY_SCHEMA}})),
        v("ollama.chat", "ollama", 2, lambda r: ollama("/api/chat", False)),
        v("ollama.chat.stream", "ollama", 2, lambda r: ollama("/api/chat", True)),
        v("ollama.generate", "ollama", 2, lambda r: ollama("/api/generate", False)),
        v("ollama.generate.stream", "ollama", 2, lambda r: ollama("/api/generate", True)),
        v("ollama.tags", "ollama", 1, lambda r: get("/api/tags")),
        v("ollama.show", "ollama", 1, lambda r: post("/api/show", {"model": MODEL}, gen=False)),
        v("ollama.ps", "ollama", 1, lambda r: get("/api/ps")),
        v("anthropic.messages", "anthropic", 2, lambda r: claude(False)),
        v("anthropic.messages.stream", "anthropic", 2, lambda r: claude(True)),
        v("anthropic.count_tokens", "anthropic", 1, lambda r: post("/v1/messages/count_tokens", {
            "model": MODEL, "messages": HI}, gen=False, headers=ANTHROPIC)),
        v("tgi.generate", "tgi", 2, lambda r: tgi("/generate")),
        v("tgi.generate_stream", "tgi", 2, lambda r: tgi("/generate_stream")),
        v("tgi.root", "tgi", 1, lambda r: tgi("/", do_sample=r.random() < 0.5)),
        v("vllm.tokenize", "vllm", 1, lambda r: post("/tokenize", {"model": MODEL, "prompt": "Say hi."}, gen=False)),
        v("vllm.detokenize", "vllm", 1, lambda r: post("/detokenize", {
            "model": MODEL, "tokens": [r.randint(100, 2000) for _ in range(5)]}, gen=False)),
        v("vllm.guided_choice", "vllm", 2, lambda r: openai_chat(False, guided_choice=["yes", "no", "maybe"])),
    ]


WRONG_TYPES: dict[str, list[tuple[str, Any]]] = {
    "/v1/chat/completions": [("temperature", "hot"), ("top_p", []), ("max_tokens", "many"), ("seed", {}),
                             ("presence_penalty", "x"), ("frequency_penalty", [1]), ("stop", 5), ("n", "two"),
                             ("logprobs", "yes"), ("top_logprobs", "3"), ("logit_bias", [1]), ("stream", "yes"),
                             ("top_k", "k"), ("min_p", {}), ("repetition_penalty", "r")],
    "/api/generate": [("options", {"temperature": "hot"}), ("options", {"num_predict": "x"}),
                      ("options", {"top_k": []}), ("options", {"seed": "s"}), ("options", {"stop": 3}),
                      ("options", {"num_ctx": "big"}), ("options", "opts"), ("format", 7), ("stream", "no")],
    "/v1/messages": [("temperature", "hot"), ("top_p", "x"), ("top_k", []), ("max_tokens", "16"),
                     ("stop_sequences", "x"), ("stream", 1)],
    "/generate": [("parameters", {"max_new_tokens": "x"}), ("parameters", {"temperature": []}),
                  ("parameters", {"top_p": "p"}), ("parameters", {"seed": "s"}), ("parameters", {"stop": "x"}),
                  ("parameters", {"repetition_penalty": {}}), ("parameters", [])],
}
BASE_BODIES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "/v1/chat/completions": ({"model": MODEL, "messages": HI, "max_tokens": 8}, {}),
    "/api/generate": ({"model": MODEL, "prompt": "hi", "stream": False}, {}),
    "/v1/messages": ({"model": MODEL, "messages": HI, "max_tokens": 8}, ANTHROPIC),
    "/generate": ({"inputs": "hi", "parameters": {"max_new_tokens": 8}}, {}),
}
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999"]


def wrong_type(r: random.Random) -> Request:
    path = r.choice(sorted(WRONG_TYPES))
    field, value = r.choice(WRONG_TYPES[path])
    body, headers = BASE_BODIES[path]
    return post(path, {**body, field: value}, headers=headers)


def non_finite(r: random.Random) -> Request:
    token = r.choice(NON_FINITE)
    path, text = r.choice([
        ("/v1/chat/completions", f'{{"model": "{MODEL}", "messages": [], "temperature": {token}}}'),
        ("/api/generate", f'{{"model": "{MODEL}", "prompt": "hi", "options": {{"top_p": {token}}}}}'),
        ("/v1/messages", f'{{"model": "{MODEL}", "max_tokens": {token}, "messages": []}}'),
        ("/generate", f'{{"inputs": "hi", "parameters": {{"temperature": {token}}}}}'),
        ("/v1/embeddings", f'{{"model": "{MODEL}", "input": "hi", "dimensions": {token}}}'),
    ])
    return raw_json(path, text, ANTHROPIC if path == "/v1/messages" else None)


def lone_surrogate(r: random.Random) -> Request:
    path, text = r.choice([
        ("/v1/chat/completions", f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "a\\ud800"}}]}}'),
        ("/api/chat", f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "\\udfff"}}]}}'),
        ("/v1/messages", '{"model": "\\ud800", "max_tokens": 4, "messages": []}'),
        ("/tokenize", f'{{"model": "{MODEL}", "prompt": "x\\ud83d"}}'),
        ("/generate", '{"inputs": "\\ud800", "parameters": {"max_new_tokens": 4}}'),
    ])
    return raw_json(path, text, ANTHROPIC if path == "/v1/messages" else None)


def deep_nesting(r: random.Random) -> Request:
    path = r.choice(["/v1/chat/completions", "/api/chat", "/v1/messages", "/generate", "/tokenize"])
    return raw_json(path, '{"model": ' + "[" * 10_000 + "]" * 10_000 + "}")


def bad_keep_alive(r: random.Random) -> Request:
    value = r.choice(['"NaN"', "NaN", "Infinity", '"NaNh"', '"-inf"'])
    return raw_json(r.choice(["/api/generate", "/api/chat"]), f'{{"model": "{MODEL}", "keep_alive": {value}}}')


def huge_keep_alive(r: random.Random) -> Request:
    """Centuries are clamped to Go's largest duration, so these load the model (2xx)."""
    value = r.choice(["1e300", '"99999999999h"'])
    return raw_json("/api/generate", f'{{"model": "{MODEL}", "keep_alive": {value}}}')


def unknown_model(r: random.Random) -> Request:
    name = f"no-such-model-{r.randint(0, 10**6)}"
    return r.choice([
        post("/v1/chat/completions", {"model": name, "messages": HI, "max_tokens": 4}),
        post("/api/generate", {"model": name, "prompt": "hi", "stream": False}),
        post("/v1/messages", {"model": name, "messages": HI, "max_tokens": 4}, headers=ANTHROPIC),
        post("/api/show", {"model": name}, gen=False),
        post("/v1/embeddings", {"model": name, "input": "hi"}),
    ])


def too_many_stops(r: random.Random) -> Request:
    stops = ["x"] * r.choice([65, 1000]) if r.random() < 0.5 else ["y" * 1025]
    return r.choice([
        post("/v1/chat/completions", {"model": MODEL, "messages": HI, "stop": stops}),
        post("/v1/messages", {"model": MODEL, "messages": HI, "max_tokens": 4, "stop_sequences": stops},
             headers=ANTHROPIC),
        post("/api/generate", {"model": MODEL, "prompt": "hi", "stream": False, "options": {"stop": stops}}),
        post("/generate", {"inputs": "hi", "parameters": {"stop": stops}}),
    ])


def schema_with_not(r: random.Random) -> Request:
    schema = {"type": "object", "properties": {"a": {"type": "string", "not": {"const": "b"}}}}
    if r.random() < 0.5:
        return openai_chat(False, response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                                                          "schema": schema}})
    return post("/api/chat", {"model": MODEL, "messages": HI, "stream": False, "format": schema})


def invalid_gbnf(r: random.Random) -> Request:
    grammar = r.choice(['root ::= "a', "root ::= undefined-rule", "root ::= [", "::=", 'root ::= ("a" | '])
    return openai_chat(False, guided_grammar=grammar)


def cross_site(r: random.Random) -> Request:
    path = r.choice(["/api/pull", "/api/copy", "/api/delete", "/api/create"])
    body = {"/api/pull": {"model": "evil/model"}, "/api/copy": {"source": MODEL, "destination": "stolen"},
            "/api/delete": {"model": MODEL}, "/api/create": {"model": "evil", "from": MODEL}}[path]
    method = "DELETE" if path == "/api/delete" else "POST"  # Ollama's delete is a DELETE; a POST is a 405
    return Request(method, path, body, (("Content-Type", "text/plain"), ("Origin", EVIL)))


def foreign_host(r: random.Random) -> Request:
    req = r.choice([get("/api/tags"), get("/v1/models"), post("/api/show", {"model": MODEL}, gen=False)])
    return Request(req.method, req.path, req.body, (*req.headers, ("Host", "evil.example")))


def hang_up_stream(r: random.Random) -> Request:
    return r.choice([openai_chat(True, max_tokens=32), ollama("/api/chat", True), claude(True),
                     tgi("/generate_stream"), ollama("/api/generate", True)])


def stalled_stream(r: random.Random) -> Request:
    return Request("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 1024,
                                                    "stream": True, "temperature": 1.0}, timeout=30.0)


def truncated_body(r: random.Random) -> Request:
    """A whole JSON body, or its first half; either way send_truncated promises 1000 bytes more."""
    req = r.choice([openai_chat(False), ollama("/api/generate", False), claude(False), tgi("/generate")])
    body = req.encoded() or b""
    return Request(req.method, req.path, body[: len(body) // 2] if r.random() < 0.5 else body, req.headers,
                   req.stream, req.timeout)


def garbage(r: random.Random) -> Request:
    return Request("RAW", "", bytes(r.randrange(256) for _ in range(r.randint(1, 4096))))


def hostile_kinds() -> list[Kind]:
    def h(name: str, weight: float, make: Callable[[random.Random], Request], expect: tuple[str, ...] = ("4xx",),
          send: Callable[[int, Request], str] = send_whole) -> Kind:
        return Kind(name, "hostile", expect, weight, make, send)

    return [
        h("hostile.non_finite", 2, non_finite),
        h("hostile.lone_surrogate", 2, lone_surrogate),
        h("hostile.deep_nesting", 1, deep_nesting),
        h("hostile.huge_model_name", 0.1, lambda r: post("/v1/chat/completions", HUGE_NAME_BODY),
          send=send_oversized),
        h("hostile.wrong_type", 3, wrong_type),
        h("hostile.keep_alive", 1, bad_keep_alive),
        h("hostile.keep_alive_huge", 0.5, huge_keep_alive, ("2xx",)),
        h("hostile.unknown_model", 2, unknown_model),
        h("hostile.too_many_stops", 1, too_many_stops),
        h("hostile.schema_not", 1, schema_with_not),
        h("hostile.invalid_gbnf", 1, invalid_gbnf),
        h("hostile.cross_site", 1, cross_site),
        h("hostile.foreign_host", 1, foreign_host),
        h("hostile.hang_up_stream", 2, hang_up_stream, ("2xx",), send_hang_up),
        h("hostile.stalled_reader", 0.3, stalled_stream, ("held", "closed"), send_stalled),
        h("hostile.truncated_body", 1, truncated_body, ("4xx", "closed"), send_truncated),
        h("hostile.garbage", 1, garbage, ("4xx", "closed"), send_garbage),
    ]


# -- the server ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """The gateway in its own process group, with a temporary config, store and log."""

    def __init__(self, port: int, work_dir: Path) -> None:
        self.port = port
        self.log_path = work_dir / "gateway.log"
        config_path = work_dir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump({**SERVER_CONFIG, "ollama_models": str(work_dir / "ollama")}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        cmd = [str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "gateway", "serve", "--host", HOST,
               "--port", str(port), "--config", str(config_path)]
        self.command = cmd
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, body = fetch_json(self.port, "/health")
                if status == 200 and body.get("models_loaded"):
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the gateway was not healthy after {STARTUP_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL to whatever of it is left after 20 s."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # runners that outlived the master, if any
        self.proc.wait(timeout=10)
        self._log.close()


def fetch_json(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=CHEAP_TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


# -- resources ----------------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def proc_figures(pid: int) -> dict[str, Any] | None:
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        cmdline = read_cmdline(pid).replace(b"\0", b" ").decode(errors="replace")
        return {"pid": pid, "cmd": cmdline.strip()[:200], "rss_kib": int(fields["VmRSS"].split()[0]),
                "threads": int(fields["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except (OSError, KeyError):
        return None


def process_roles(master: int) -> dict[str, int]:
    """master, worker (the master's child), and the worker's children: runner-N and multiprocessing's
    resource-tracker."""
    roles = {"master": master}
    workers = children(master)
    if workers:
        roles["worker"] = workers[0]
        helpers = children(workers[0])
        runners = [pid for pid in helpers if b"resource_tracker" not in read_cmdline(pid)]
        roles.update({f"runner-{i}": pid for i, pid in enumerate(runners)})
        roles.update({f"resource-tracker-{i}": pid for i, pid in enumerate(set(helpers) - set(runners))})
    return roles


def read_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def sample(port: int, master: int, started: float) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        health_status, _ = fetch_json(port, "/health")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        health_status = f"error:{type(exc).__name__}"
    health_ms = (time.monotonic() - t0) * 1000
    try:
        _, listing = fetch_json(port, "/api/requests")
        records = len(listing["requests"])
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        records = None
    procs = {role: proc_figures(pid) for role, pid in process_roles(master).items()}
    return {"t_s": round(time.monotonic() - started, 1), "health_status": health_status,
            "health_ms": round(health_ms, 1), "api_requests_records": records,
            "processes": {role: figures for role, figures in procs.items() if figures is not None}}


# -- the load -----------------------------------------------------------------------------------------------

class Load:
    """`workers` threads sending weighted random kinds until `stop` is set; outcomes counted per kind."""

    def __init__(self, port: int, kinds: list[Kind], workers: int, seed: int) -> None:
        self.port = port
        self.kinds = kinds
        self.weights = [k.weight for k in kinds]
        self.seed = seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[dict[str, Any]] = []
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(workers)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def run_one(self, kind: Kind, rng: random.Random) -> None:
        req = kind.make(rng)
        t0 = time.monotonic()
        outcome = outcome_of(kind, self.port, req)
        seconds = time.monotonic() - t0
        with self.lock:
            self.counts[kind.name][outcome] += 1
            if not passes(kind, outcome):
                self.failures.append({"kind": kind.name, "outcome": outcome, "seconds": round(seconds, 2),
                                      "expected": list(kind.expect), "request": req.describe()})

    def _worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while not self.stop.is_set():
            self.run_one(rng.choices(self.kinds, self.weights)[0], rng)


def warm_up(load: Load, kinds: list[Kind]) -> None:
    """Every valid kind once, so runners and caches exist before the first sample (counted with the rest)."""
    rng = random.Random(load.seed)
    for kind in kinds:
        load.run_one(kind, rng)


# -- report -------------------------------------------------------------------------------------------------

def resource_table(samples: list[dict[str, Any]]) -> str:
    first, last = samples[0]["processes"], samples[-1]["processes"]
    rows = ["| process | RSS MiB start | end | max | threads start | end | max | fds start | end | max |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for role in sorted(set(first) | set(last)):
        cells = [role]
        for key, scale in (("rss_kib", 1024), ("threads", 1), ("fds", 1)):
            seen = [s["processes"][role][key] for s in samples if role in s["processes"]]
            start = first[role][key] / scale if role in first else None
            end = last[role][key] / scale if role in last else None
            cells += [fmt(start), fmt(end), fmt(max(seen) / scale if seen else None)]
        rows.append("| " + " | ".join(cells) + " |")
    health = [s["health_ms"] for s in samples]
    rows.append("")
    rows.append(f"/health latency ms per sample: {', '.join(f'{h:.0f}' for h in health)}; "
                f"/api/requests records: {samples[0]['api_requests_records']} → {samples[-1]['api_requests_records']}")
    return "\n".join(rows)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else f"{value:.0f}"


def outcome_table(load: Load) -> str:
    rows = ["| kind | expected | outcomes | failures |", "| --- | --- | --- | --- |"]
    by_name = {k.name: k for k in load.kinds}
    for name in sorted(load.counts):
        kind, counts = by_name[name], load.counts[name]
        failed = sum(n for outcome, n in counts.items() if not passes(kind, outcome))
        shown = ", ".join(f"{outcome}: {n}" for outcome, n in sorted(counts.items()))
        rows.append(f"| {name} | {'/'.join(kind.expect)} | {shown} | {failed} |")
    return "\n".join(rows)


def failure_list(failures: list[dict[str, Any]], per_kind: int = 3) -> str:
    if not failures:
        return "No failures."
    shown: Counter = Counter()
    lines = [f"{len(failures)} failures; up to {per_kind} examples per kind and outcome:"]
    for f in failures:
        key = (f["kind"], f["outcome"])
        shown[key] += 1
        if shown[key] <= per_kind:
            lines.append(f"- {f['kind']} → {f['outcome']} after {f['seconds']} s: `{f['request']}`")
    return "\n".join(lines)


def report(result: dict[str, Any], load: Load) -> str:
    total = sum(sum(c.values()) for c in load.counts.values())
    return "\n\n".join([
        f"## Soak {result['timestamp']}: {result['config']['minutes']} min, {result['config']['workers']} workers, "
        f"seed {result['config']['seed']}; {total} requests, {len(load.failures)} failures"
        + ("" if result["server_alive_at_end"] else " — THE SERVER DIED"),
        resource_table(result["samples"]),
        outcome_table(load),
        failure_list(load.failures),
    ])


# -- main ---------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long the traffic runs (default 30)")
    p.add_argument("--workers", type=int, default=6, help="client threads (default 6)")
    p.add_argument("--seed", type=int, default=1, help="seed of the request choice (default 1)")
    p.add_argument("--port", type=int, default=0, help="the gateway's port (default: a free one)")
    p.add_argument("--keep-server-log", action="store_true", help="copy the server's log next to the JSON")
    return p.parse_args(argv)


def soak(args: argparse.Namespace, server: Server, stamp: str) -> dict[str, Any]:
    kinds = valid_kinds() + hostile_kinds()
    load = Load(server.port, kinds, args.workers, args.seed)
    warm_up(load, valid_kinds())
    started = time.monotonic()
    samples = [sample(server.port, server.proc.pid, started)]
    load.start()
    end = started + args.minutes * 60
    while (now := time.monotonic()) < end and server.proc.poll() is None:
        time.sleep(min(SAMPLE_EVERY - (now - started) % SAMPLE_EVERY, end - now))
        if time.monotonic() < end - 1 and server.proc.poll() is None:
            samples.append(sample(server.port, server.proc.pid, started))
    load.join(timeout=GEN_TIMEOUT + 5)  # in-flight requests finish (an interrupt skips this: threads are daemons)
    alive = server.proc.poll() is None
    if alive:
        samples.append(sample(server.port, server.proc.pid, started))
    result = {"timestamp": stamp, "command": server.command, "server_config": SERVER_CONFIG,
              "config": {"minutes": args.minutes, "workers": args.workers, "seed": args.seed},
              "kinds": {k.name: {"family": k.family, "expect": list(k.expect), "weight": k.weight} for k in kinds},
              "samples": samples, "server_alive_at_end": alive,
              "counts": {name: dict(c) for name, c in sorted(load.counts.items())}, "failures": load.failures}
    print(report(result, load))
    if not alive:
        print("\nThe server exited during the soak; end of its log:\n" + server.log_tail())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through `finally`, so the server is stopped

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = Server(args.port or free_port(), Path(tmp))
        try:
            server.wait_healthy()
            result = soak(args, server, stamp)
        finally:
            server.stop()
            if args.keep_server_log:
                shutil.copy(server.log_path, RESULTS_DIR / f"soak-{stamp}.log")
    out = RESULTS_DIR / f"soak-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return 0 if result["server_alive_at_end"] and not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
