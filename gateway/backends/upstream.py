"""The upstream backend: a model served by OpenAI-compatible servers elsewhere (vLLM, SGLang, llama-server,
Ollama's /v1, another llm-gateway), behind the same `Backend` interface as a local model.

A generation is one streamed call to `/v1/chat/completions` or `/v1/completions` on the URL the balancer picks
(`upstream_balance.py`); a reader thread turns its chunks into the backend's events (`upstream_wire.py`), so the
service, tracker, metrics and every family's renderer work as they do for a local model. Failover happens only
before the first byte: until a choice has emitted anything, a refused connection, a 5xx, a 429/503 or an error
event in the stream (vLLM and SGLang report failures after their 200) sends the request to another URL. After
that, a failure ends the stream with the family's in-band error; a half-sent answer is never replayed.

`generate` waits for the upstream's status line, so a request the upstream refuses (a bad field) reaches the
client as a status code with the upstream's message. Every URL is health-checked on a timer (GET /health, or
/v1/models where a server has no /health), which also reads the model's context size once.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from typing import Any, Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as TransportError  # a broken read of a streamed body

from gateway.backends.base import Backend, BackendStatus, ChoicePlan, GenerationRun
from gateway.backends.prompts import with_default_system, with_model_defaults
from gateway.backends.structured import with_call_ids
from gateway.backends.upstream_balance import Balancer, Endpoint
from gateway.backends.upstream_wire import (
    SSEDecoder,
    StreamTranslator,
    UpstreamRefusal,
    refusal,
    request_body,
    stream_error,
    wire_message,
)
from gateway.models.registry import ModelSpec
from gateway.models.upstream_config import UpstreamConfig
from gateway.types import ErrorKind, GatewayError, InternalRequest, TokenizeResult, invalid

log = logging.getLogger("gateway.backends.upstream")

READ_SIZE = 65536
CONNECTIONS = 64  # kept open per URL: about as many as HTTP threads, so streams do not reconnect every time
PROBE_TIMEOUT = 5.0  # seconds a health check may take
CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window", "n_ctx")
"""Where servers' /v1/models entries give the context: vLLM and SGLang (and llm-gateway) `max_model_len`;
llama-server puts `n_ctx_train` under `meta`."""


class UpstreamBackend(Backend):
    """`name` is the model's name here; `config` says where it is served (`config.model` is its name there).
    `n_ctx` overrides the context the upstream reports. `session` and `clock` are seams for tests."""

    def __init__(self, name: str, config: UpstreamConfig, n_ctx: int | None = None,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.config = config
        self.model = config.model or name
        self.n_ctx = n_ctx or 0
        self._fixed_ctx = n_ctx is not None
        self.clock = clock
        self._session = session or _session(len(config.urls))
        self._headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.balancer = Balancer(name, config.urls, config.cooldown, clock)
        self._stop = threading.Event()
        self.check_health()
        self._checker: threading.Thread | None = None
        if config.health_interval > 0:
            self._checker = threading.Thread(target=self._check_forever, name=f"upstream-health-{name}", daemon=True)
            self._checker.start()

    # -- HTTP ------------------------------------------------------------------------------------------------

    def open(self, path: str, body: dict[str, Any], deadline: float, busy: set[str], stream: bool
             ) -> tuple[Endpoint, requests.Response]:
        """A 200 answer to `body` from the best URL, failing over while URLs refuse, fail or are busy. The
        endpoint stays counted in flight until the caller releases it; a refusal that is about the request
        itself is raised at once as the client's error."""
        while True:
            endpoint = self.balancer.acquire(deadline, frozenset(busy))
            try:
                response = self._session.post(endpoint.url + path, json=body, headers=self._headers, stream=stream,
                                              timeout=(self.config.connect_timeout, self.config.read_timeout))
            except requests.RequestException as exc:
                self.balancer.failed(endpoint, _reason(exc))
                self.balancer.release(endpoint)
                log.warning("model %s: %s failed: %s", self.name, endpoint.url, _reason(exc))
                continue
            if response.status_code == 200:
                return endpoint, response
            refused = refusal(response.status_code, _payload(response), endpoint.url)
            response.close()
            self.balancer.release(endpoint)
            if not self.note_refusal(endpoint, refused, busy):
                raise refused.error

    def note_refusal(self, endpoint: Endpoint, refused: UpstreamRefusal, busy: set[str]) -> bool:
        """Tell the balancer what a refusal says of its URL; True when another URL may be tried."""
        if refused.busy:
            self.balancer.throttled(endpoint, refused.error.message)
            busy.add(endpoint.url)
        elif refused.broken:
            self.balancer.failed(endpoint, refused.error.message)
        if refused.busy or refused.broken:
            log.warning("model %s: %s", self.name, refused.error.message)
        return refused.busy or refused.broken

    def call(self, path: str, body: dict[str, Any]) -> Any:
        """A plain (not streamed) JSON call with the same failover."""
        endpoint, response = self.open(path, body, self.clock() + self.config.first_byte_timeout, set(), False)
        try:
            data = response.json()
        except ValueError:
            self.balancer.failed(endpoint, f"{path} answered with something other than JSON")
            raise GatewayError(ErrorKind.UNAVAILABLE, f"The upstream server {endpoint.url} answered {path} with "
                                                      "something other than JSON.", code="upstream_error") from None
        finally:
            self.balancer.release(endpoint)
        self.balancer.succeeded(endpoint)
        return data

    # -- health ----------------------------------------------------------------------------------------------

    def check_health(self) -> None:
        """Probe every URL once: a failure opens its circuit, a success lets it be tried again; the first URL to
        list its models tells the context size, unless config set it."""
        for endpoint in self.balancer.endpoints:
            self.balancer.probed(endpoint, self._probe(endpoint.url))

    def _check_forever(self) -> None:
        while not self._stop.wait(self.config.health_interval):
            self.check_health()

    def _probe(self, url: str) -> str | None:
        """None when `url` is healthy, else why not. A server without /health (Ollama) is asked for its models."""
        timeout = (self.config.connect_timeout, PROBE_TIMEOUT)
        try:
            health = self._session.get(url + "/health", headers=self._headers, timeout=timeout)
            if health.status_code not in (200, 404):
                return f"/health answered {health.status_code}"
            if health.status_code == 200 and (self.n_ctx or self._fixed_ctx):
                return None
            models = self._session.get(url + "/v1/models", headers=self._headers, timeout=timeout)
        except requests.RequestException as exc:
            return _reason(exc)
        if models.status_code == 200 and not self._fixed_ctx:
            self.n_ctx = self.n_ctx or context_size(_payload(models), self.model)
        if health.status_code == 200 or models.status_code == 200:
            return None
        return f"/health answered 404 and /v1/models {models.status_code}"

    # -- Backend ---------------------------------------------------------------------------------------------

    def generate(self, req: InternalRequest, spec: ModelSpec) -> GenerationRun:
        if req.kind not in ("chat", "completion"):
            raise invalid(f"An upstream model cannot serve a `{req.kind}` generation.")
        if req.echo and any(not isinstance(p, str) for p in req.prompts):
            raise invalid("`echo` of token-id prompts is not supported for a model served upstream.", "echo")
        messages = with_default_system(with_call_ids(req.messages, None), spec) if req.kind == "chat" else []
        sampling = with_model_defaults(req.sampling, spec)
        path, body = request_body(req, self.model, sampling, messages)
        run = UpstreamRun(self, req.kind, path, body, _choices(req), sampling.max_tokens or self.n_ctx)
        run.start()
        return run

    def embed(self, req: InternalRequest, spec: ModelSpec, on_started=None) -> tuple[list[list[float]], int]:
        body: dict[str, Any] = {"model": self.model, "input": list(req.prompts), "encoding_format": "float"}
        if req.truncate_tokens:
            body["truncate_prompt_tokens"] = req.truncate_tokens
        if on_started is not None:
            on_started(0)
        data = self.call("/v1/embeddings", body)
        try:
            rows = sorted(data["data"], key=lambda row: row.get("index", 0))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _garbled("/v1/embeddings") from None
        return vectors, int((data.get("usage") or {}).get("prompt_tokens") or 0)

    def tokenize(self, req: InternalRequest, spec: ModelSpec) -> TokenizeResult:
        """vLLM's /tokenize (which llm-gateway serves too), with llama-server's names for the same fields
        (`content`, `add_special`, `with_pieces`) beside them, since each server ignores the other's."""
        body: dict[str, Any] = {"model": self.model, "add_special_tokens": req.add_special_tokens,
                                "return_token_strs": True}
        if req.messages:
            body.update(messages=[wire_message(m) for m in with_call_ids(req.messages, None)],
                        add_generation_prompt=req.add_generation_prompt)
        else:
            text = req.prompts[0] if req.prompts else ""
            body.update(prompt=text, content=text, add_special=req.add_special_tokens, with_pieces=True)
        data = self._offered("/tokenize", body)
        try:
            items = data["tokens"]
            tokens = [item["id"] if isinstance(item, dict) else int(item) for item in items]
            pieces = data.get("token_strs") or [item.get("piece", "") if isinstance(item, dict) else ""
                                                for item in items]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _garbled("/tokenize") from None
        return TokenizeResult(tokens, [str(p) for p in pieces], self.n_ctx, spec.name)

    def detokenize(self, tokens: list[int]) -> str:
        data = self._offered("/detokenize", {"model": self.model, "tokens": tokens})
        text = data.get("prompt", data.get("content")) if isinstance(data, dict) else None
        if not isinstance(text, str):
            raise _garbled("/detokenize")
        return text

    def _offered(self, path: str, body: dict[str, Any]) -> Any:
        """A call to an endpoint that only some servers have: where it is missing, a 400 that says so."""
        try:
            return self.call(path, body)
        except GatewayError as err:
            if err.details.get("upstream_status") == 404:
                raise invalid(f"The upstream server of `{self.name}` offers no {path}.") from None
            raise

    def describe(self) -> BackendStatus:
        return BackendStatus(kind="upstream", n_ctx=self.n_ctx, parallel=0,
                             health="ok" if self.balancer.healthy() else "unavailable",
                             busy=self.balancer.in_flight(), endpoints=self.balancer.snapshot())

    def close(self) -> None:
        self._stop.set()
        self._session.close()


class UpstreamRun(GenerationRun):
    """One streamed call and the thread that reads it. A stream that fails before its first byte is sent to
    another URL, within the first-byte deadline; `close` stops reading and hangs up, which makes vLLM, SGLang
    and llama.cpp end the sequence."""

    def __init__(self, backend: UpstreamBackend, kind: str, path: str, body: dict[str, Any],
                 choices: list[ChoicePlan], max_tokens: int):
        self.events = queue.SimpleQueue()
        self.choices = choices
        self.max_tokens = max_tokens
        self._backend = backend
        self._path, self._body = path, body
        self._deadline = backend.clock() + backend.config.first_byte_timeout
        self._busy: set[str] = set()
        self._closed = threading.Event()
        self._translator = StreamTranslator(choices, kind, backend.clock())
        self._endpoint: Endpoint | None = None
        self._response: requests.Response | None = None

    def queue_position(self) -> int:
        return 0

    def start(self) -> None:
        """Wait for a URL's status line (so the upstream's refusal is the client's status code), then read on
        a thread of its own."""
        self._endpoint, self._response = self._backend.open(self._path, self._body, self._deadline, self._busy, True)
        threading.Thread(target=self._pump, name=f"upstream-{self._backend.name}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        response = self._response
        if response is not None:
            _hang_up(response)

    def _pump(self) -> None:
        """Read streams until one ends; fail over while nothing has been emitted."""
        balancer = self._backend.balancer
        while True:
            refused = self._relay()
            balancer.release(self._endpoint)  # before the end is told, so a finished request is never in flight
            if refused is None:
                self._emit(self._translator.finish(self._backend.clock(), cancelled=self._closed.is_set()))
                return
            retry = not self._translator.committed and not self._closed.is_set()
            if self._backend.note_refusal(self._endpoint, refused, self._busy) and retry:
                try:
                    self._endpoint, self._response = self._backend.open(self._path, self._body, self._deadline,
                                                                        self._busy, True)
                    continue
                except GatewayError as err:
                    refused = UpstreamRefusal(err)
            self._emit(self._translator.finish(self._backend.clock(), error=self._failure(refused)))
            return

    def _relay(self) -> UpstreamRefusal | None:
        """Relay the current response's events up to its end; None when it ended well (or was cancelled), else
        why not."""
        url, decoder, translator = self._endpoint.url, SSEDecoder(), self._translator
        try:
            while not self._closed.is_set():
                data = self._response.raw.read1(READ_SIZE, decode_content=True)
                if not data:
                    break
                for payload in decoder.feed(data):
                    if payload.strip() == "[DONE]":
                        return None
                    chunk = json.loads(payload)
                    refused = stream_error(chunk, url) if isinstance(chunk, dict) else None
                    if refused is not None:
                        return refused
                    was_committed = translator.committed
                    self._emit(translator.feed(chunk, self._backend.clock()) if isinstance(chunk, dict) else [])
                    if translator.committed and not was_committed:  # its first token: the URL works
                        self._backend.balancer.succeeded(self._endpoint)
        except (requests.RequestException, TransportError, OSError, ValueError) as exc:
            if not self._closed.is_set():
                return _broken(url, _reason(exc))
        finally:
            self._response.close()
        if self._closed.is_set() or translator.complete:
            return None
        return _broken(url, "the stream ended before the answer did")

    def _failure(self, refused: UpstreamRefusal) -> GatewayError:
        """The client's error: a broken upstream after the first byte is named as such."""
        if not self._translator.committed or not refused.broken:
            return refused.error
        return GatewayError(ErrorKind.UNAVAILABLE, f"The upstream server failed during the answer: "
                                                   f"{refused.error.message}", code="upstream_failed",
                            details={"model": self._backend.name})

    def _emit(self, events: list) -> None:
        for item in events:
            self.events.put(item)


def context_size(models: Any, name: str) -> int:
    """The context of `name` (else of the only model) in a /v1/models answer; 0 when it says none."""
    entries = models.get("data") if isinstance(models, dict) else None
    if not isinstance(entries, list):
        return 0
    entries = [e for e in entries if isinstance(e, dict)]
    entry = next((e for e in entries if e.get("id") == name), entries[0] if len(entries) == 1 else None)
    if entry is None:
        return 0
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for value in [*(entry.get(key) for key in CONTEXT_FIELDS), meta.get("n_ctx_train")]:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _choices(req: InternalRequest) -> list[ChoicePlan]:
    """The upstream numbers choices as we do (prompt × n) and reports one usage for all: the first counts it."""
    if req.kind == "chat":
        echo = (req.messages[-1].content or "") if req.messages else ""
        return [ChoicePlan(j, echo, count_prompt=j == 0) for j in range(req.n)]
    return [ChoicePlan(p * req.n + j, prompt if isinstance(prompt, str) else "", count_prompt=p == j == 0)
            for p, prompt in enumerate(req.prompts) for j in range(req.n)]


def _session(urls: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=max(urls, 1), pool_maxsize=CONNECTIONS, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _hang_up(response: requests.Response) -> None:
    """Wake a reader blocked on the socket (closing it from another thread would not) and drop the connection."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing is blocked on it


def _payload(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ConnectionError) and "refused" in str(exc).lower():
        return "connection refused"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer within read_timeout"
    return f"{type(exc).__name__}: {exc}"[:300]


def _broken(url: str, reason: str) -> UpstreamRefusal:
    return UpstreamRefusal(GatewayError(ErrorKind.UNAVAILABLE, f"The stream from {url} broke: {reason}.",
                                        code="upstream_error"), broken=True)


def _garbled(path: str) -> GatewayError:
    return GatewayError(ErrorKind.UNAVAILABLE, f"The upstream server's answer to {path} is not in the expected "
                                               "shape.", code="upstream_error")
