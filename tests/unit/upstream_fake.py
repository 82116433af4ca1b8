"""A tiny OpenAI-compatible server that plays an upstream engine, well or badly, for the upstream backend's
tests: it stands for a remote vLLM or SGLang, not for llama.cpp. Each POST takes the next act of its `script`
(the last act repeats); every request body is kept in `bodies`.

Acts: "ok" (a streamed answer, or the JSON answer of /v1/embeddings, /tokenize, /detokenize), "500", "429",
"400" (a client error naming a field), "404", "error_first" (200, then an error event before any token),
"die_mid" (one token, then the connection drops), "stall" (one token, then nothing until `release` is set).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake-model"
N_CTX = 4096

CHAT_CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "Think"}}]},
    {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
    {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_up", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                              "prompt_tokens_details": {"cached_tokens": 4}}},
]
COMPLETION_CHUNKS: list[dict[str, Any]] = [
    {"choices": [{"index": 0, "text": "one", "finish_reason": None}]},
    {"choices": [{"index": 0, "text": " two", "finish_reason": "length"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
]


class FakeUpstream:
    """`with FakeUpstream(["500", "ok"]) as up:` serves on `up.url` for the block's duration."""

    def __init__(self, script: list[str] | None = None, health: int = 200):
        self.script = list(script or ["ok"])
        self.health = health
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeUpstream:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def next_act(self, path: str, body: dict[str, Any]) -> str:
        with self._lock:
            self.bodies.append((path, body))
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.bodies if p == path]


def _handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(upstream.health, {"status": "ok" if upstream.health == 200 else "loading"})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": MODEL, "max_model_len": N_CTX}]})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            act = upstream.next_act(self.path, body)
            if act == "500":
                self._json(500, {"error": {"message": "engine crashed", "type": "InternalServerError"}})
            elif act == "429":
                self._json(429, {"error": {"message": "too many requests", "type": "rate_limit"}})
            elif act == "400":
                self._json(400, {"object": "error", "message": "`temperature` must be at most 2.",
                                 "param": "temperature", "code": 400})
            elif act == "404":
                self._json(404, {"detail": "Not Found"})
            elif self.path in ("/v1/chat/completions", "/v1/completions"):
                self._stream(act, CHAT_CHUNKS if self.path == "/v1/chat/completions" else COMPLETION_CHUNKS)
            else:
                self._json(200, _answer(self.path, body))

        def _json(self, status: int, data: Any) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _stream(self, act: str, chunks: list[dict[str, Any]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if act == "error_first":
                self._event({"error": {"message": "CUDA out of memory", "type": "InternalServerError",
                                       "code": 500}})
                self._event("[DONE]")
                self._end()
                return
            for number, chunk in enumerate(chunks):
                self._event(chunk)
                if act == "die_mid" and number == 2:
                    self.close_connection = True
                    return  # no last chunk: the connection just ends
                if act == "stall" and number == 2:
                    upstream.release.wait()
                    return
            self._event("[DONE]")
            self._end()

        def _event(self, data: Any) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            payload = f"data: {text}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

        def _end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def _answer(path: str, body: dict[str, Any]) -> dict[str, Any]:
    if path == "/v1/embeddings":
        return {"data": [{"index": i, "embedding": [float(i), 0.5]} for i, _ in enumerate(body["input"])][::-1],
                "usage": {"prompt_tokens": 5}}
    if path == "/tokenize":  # vLLM's shape
        return {"count": 3, "max_model_len": N_CTX, "tokens": [1, 2, 3], "token_strs": ["a", "b", "c"]}
    if path == "/detokenize":
        return {"prompt": "abc"}
    return {"error": "unknown path"}
