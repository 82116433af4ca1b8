"""Closed-loop load generator for any OpenAI-compatible server (llm-gateway, llama-server, ...).

Each of ``c`` worker threads sends one streaming request, reads it to the end, and immediately sends the next,
so exactly ``c`` requests are in flight at any time: this measures what the server sustains at a fixed
concurrency rather than how it queues an open arrival process, which is what "aggregate tok/s at c = N"
means in bench/README.md.

Streaming is read with ``http.client`` and ``read1`` instead of ``requests.iter_lines``: ``iter_lines`` reads
fixed-size blocks and can sit on several tokens before handing them over, which would falsify time to first
token and inter-token latency. Only the standard library is used for the hot path so the client stays cheap
on a 2-core machine where it competes with the server for CPU.

Usage:
    python bench/loadgen.py --base-url http://127.0.0.1:8080 --model smollm2-135m-instruct \
        --concurrency 1,4,8,16 --duration 20 --max-tokens 128
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

# Prompts checked to run SmolLM2-135M-Instruct (greedy) past 512 tokens without an end-of-generation token, so
# every request generates exactly max_tokens on any server without relying on an ignore_eos extension.
DEFAULT_CHAT_PROMPT = (
    "Write a very long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe every day of the year in detail."
)
DEFAULT_COMPLETION_PROMPT = (
    "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper. Every day he"
)


@dataclass
class RequestResult:
    """Timing of one streamed request; times are seconds relative to when the request was sent."""

    ok: bool
    error: str | None = None
    ttft: float | None = None
    latency: float = 0.0
    content_chunks: int = 0
    completion_tokens: int | None = None  # from the usage chunk, when the server sends one
    prompt_tokens: int | None = None
    gaps: list[float] = field(default_factory=list)  # time between successive content chunks
    finish_reason: str | None = None

    @property
    def tokens(self) -> int:
        """Tokens generated: the server's usage count if it gave one, else one per content chunk."""
        return self.completion_tokens if self.completion_tokens is not None else self.content_chunks


@dataclass
class LevelResult:
    """Aggregate of one concurrency level; latencies in milliseconds, throughput in tokens per second."""

    concurrency: int
    wall_s: float
    requests_ok: int
    errors: int
    completion_tokens: int
    tok_per_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    itl_p95_ms: float | None
    tpot_mean_ms: float | None  # mean over requests of (last chunk - first chunk) / (chunks - 1)
    latency_p50_s: float | None
    mean_completion_tokens: float | None
    mean_prompt_tokens: float | None
    usage_reported: bool
    usage_chunk_mismatches: int  # requests where usage tokens != content chunks (several tokens per chunk)
    finish_reasons: dict[str, int]
    error_samples: list[str]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data so an empty level is visible, not 0."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class Target:
    """Where and what to send; builds one request body reused by every worker (same prompt, greedy)."""

    def __init__(self, base_url: str, model: str, endpoint: str, prompt: str, max_tokens: int,
                 ignore_eos: bool, timeout: float, api_key: str | None = None) -> None:
        url = urllib.parse.urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported base URL scheme: {base_url}")
        self.https = url.scheme == "https"
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if self.https else 80)
        prefix = url.path if url.path.endswith("/v1") else url.path + "/v1"
        self.endpoint = endpoint
        self.path = prefix + ("/chat/completions" if endpoint == "chat" else "/completions")
        self.timeout = timeout
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if ignore_eos:
            # llama-server extension; servers that do not know it should ignore it.
            body["ignore_eos"] = True
        self.body = json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def connect(self) -> http.client.HTTPConnection:
        """Open a fresh connection per request: fair to servers with and without keep-alive."""
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)


def _content_of(event: dict[str, Any], endpoint: str) -> str | None:
    """Text carried by one SSE chunk, or None when it carries none (role-only, usage, finish chunks)."""
    choices = event.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") if endpoint == "chat" else choice.get("text")
    return text or None


def _finish_of(event: dict[str, Any]) -> str | None:
    choices = event.get("choices") or []
    return choices[0].get("finish_reason") if choices else None


def stream_one(target: Target) -> RequestResult:
    """Send one streaming request and time every content chunk as it arrives."""
    res = RequestResult(ok=False)
    t0 = time.perf_counter()
    last: float | None = None
    conn = target.connect()
    try:
        conn.request("POST", target.path, body=target.body, headers=target.headers)
        resp = conn.getresponse()
        if resp.status != 200:
            detail = resp.read(500).decode(errors="replace")
            res.error = f"HTTP {resp.status}: {detail}"
            return res
        buf = b""
        done = False
        while not done:
            data = resp.read1(65536)
            if not data:
                break
            now = time.perf_counter()
            buf += data
            # SSE: one JSON document per "data:" line; blank lines separate events.
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                event = json.loads(payload)
                if "error" in event:
                    res.error = f"stream error: {json.dumps(event['error'])[:300]}"
                    return res
                if _content_of(event, target.endpoint) is not None:
                    if last is None:
                        res.ttft = now - t0
                    else:
                        res.gaps.append(now - last)
                    last = now
                    res.content_chunks += 1
                res.finish_reason = _finish_of(event) or res.finish_reason
                usage = event.get("usage")
                if usage:
                    res.completion_tokens = usage.get("completion_tokens")
                    res.prompt_tokens = usage.get("prompt_tokens")
        res.latency = time.perf_counter() - t0
        res.ok = res.content_chunks > 0
        if not res.ok:
            res.error = "stream ended without content"
        return res
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    finally:
        conn.close()


def run_level(target: Target, concurrency: int, requests_per_worker: int | None,
              duration: float | None) -> LevelResult:
    """Run ``concurrency`` closed-loop workers until each sent its quota or the duration ran out.

    With a duration, workers stop *starting* requests at the deadline and the level ends when the last one
    finishes; the wall time runs to that point, so the tail (where fewer than c streams are active) is
    counted. With equal prompts and max_tokens the workers finish nearly in lockstep, so the tail is short.
    """
    results: list[RequestResult] = []
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    deadline_box: list[float] = [0.0]

    def worker() -> None:
        start_barrier.wait()
        sent = 0
        while True:
            if requests_per_worker is not None and sent >= requests_per_worker:
                break
            if duration is not None and time.perf_counter() >= deadline_box[0]:
                break
            r = stream_one(target)
            sent += 1
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    deadline_box[0] = t_start + (duration or 0.0)
    start_barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start

    ok = [r for r in results if r.ok]
    errs = [r for r in results if not r.ok]
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    gaps = [g * 1000 for r in ok for g in r.gaps]
    tpots = [sum(r.gaps) / len(r.gaps) * 1000 for r in ok if r.gaps]
    prompt_counts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    finish: dict[str, int] = {}
    for r in ok:
        key = r.finish_reason or "none"
        finish[key] = finish.get(key, 0) + 1
    return LevelResult(
        concurrency=concurrency,
        wall_s=wall,
        requests_ok=len(ok),
        errors=len(errs),
        completion_tokens=tokens,
        tok_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
        itl_p50_ms=percentile(gaps, 50),
        itl_p95_ms=percentile(gaps, 95),
        tpot_mean_ms=statistics.fmean(tpots) if tpots else None,
        latency_p50_s=percentile([r.latency for r in ok], 50),
        mean_completion_tokens=tokens / len(ok) if ok else None,
        mean_prompt_tokens=statistics.fmean(prompt_counts) if prompt_counts else None,
        usage_reported=any(r.completion_tokens is not None for r in ok),
        usage_chunk_mismatches=sum(1 for r in ok if r.completion_tokens not in (None, r.content_chunks)),
        finish_reasons=finish,
        error_samples=[r.error or "" for r in errs[:3]],
    )


def warmup(target: Target, n: int = 2) -> None:
    """Send a few requests first so one-time costs (page-in, allocations, caches) stay out of level 1."""
    for _ in range(n):
        r = stream_one(target)
        if not r.ok:
            raise RuntimeError(f"warm-up request failed: {r.error}")


def run_levels(target: Target, levels: list[int], requests_per_worker: int | None, duration: float | None,
               pause_s: float = 1.0, log: bool = True) -> list[LevelResult]:
    """Run each concurrency level in turn, with a short pause so one level's tail does not leak into the next."""
    out: list[LevelResult] = []
    for c in levels:
        if log:
            print(f"  c={c} ...", file=sys.stderr, flush=True)
        lvl = run_level(target, c, requests_per_worker, duration)
        if log:
            print(f"  c={c}: {lvl.tok_per_s:.1f} tok/s, {lvl.requests_ok} ok, {lvl.errors} errors, "
                  f"ttft p50 {_fmt(lvl.ttft_p50_ms)} ms, itl p50 {_fmt(lvl.itl_p50_ms)} ms",
                  file=sys.stderr, flush=True)
        out.append(lvl)
        time.sleep(pause_s)
    return out


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(levels: list[LevelResult]) -> str:
    """Markdown table of the per-level results, for humans; the JSON has everything."""
    head = ("| c | tok/s | requests | errors | tokens/req | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms "
            "| wall s |")
    sep = "|" + "---|" * 10
    rows = [head, sep]
    for lv in levels:
        rows.append(
            f"| {lv.concurrency} | {lv.tok_per_s:.1f} | {lv.requests_ok} | {lv.errors} "
            f"| {_fmt(lv.mean_completion_tokens)} | {_fmt(lv.ttft_p50_ms)} | {_fmt(lv.ttft_p95_ms)} "
            f"| {_fmt(lv.itl_p50_ms)} | {_fmt(lv.itl_p95_ms)} | {lv.wall_s:.1f} |"
        )
    return "\n".join(rows)


def parse_levels(text: str) -> list[int]:
    """'1,4,8,16' -> [1, 4, 8, 16]."""
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError("concurrency must be a comma-separated list of positive integers")
    return levels


def add_load_args(p: argparse.ArgumentParser) -> None:
    """Load-shape options shared with bench/run.py so both servers get exactly the same load."""
    p.add_argument("--concurrency", type=parse_levels, default=[1, 4, 8, 16],
                   help="comma-separated concurrency levels (default 1,4,8,16)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--requests-per-worker", type=int, default=None,
                      help="requests each worker sends per level")
    mode.add_argument("--duration", type=float, default=None,
                      help="seconds per level during which workers start new requests (default 20)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt", default=None,
                   help="fixed prompt; pick one that makes the model run to max_tokens (default: a long-story "
                        "request suited to the endpoint)")
    p.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    p.add_argument("--ignore-eos", action="store_true",
                   help="send llama-server's ignore_eos extension (only fair if every server honours it)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request socket timeout in seconds")
    p.add_argument("--warmup", type=int, default=2, help="warm-up requests before the first level")


def resolve_prompt(args: argparse.Namespace) -> str:
    """The chat prompt is an instruction; a raw completion needs text to continue instead."""
    if args.prompt is not None:
        return args.prompt
    return DEFAULT_CHAT_PROMPT if args.endpoint == "chat" else DEFAULT_COMPLETION_PROMPT


def resolve_mode(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """Default to a 20 s duration when neither a request count nor a duration was given."""
    if args.requests_per_worker is None and args.duration is None:
        return None, 20.0
    return args.requests_per_worker, args.duration


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8080 (or .../v1)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--api-key", default=None)
    p.add_argument("--json", dest="json_out", default=None, help="write results JSON here ('-' for stdout)")
    add_load_args(p)
    args = p.parse_args(argv)
    rpw, duration = resolve_mode(args)
    args.prompt = resolve_prompt(args)
    target = Target(args.base_url, args.model, args.endpoint, args.prompt, args.max_tokens, args.ignore_eos,
                    args.timeout, args.api_key)
    if args.warmup:
        warmup(target, args.warmup)
    levels = run_levels(target, args.concurrency, rpw, duration)
    result = {
        "base_url": args.base_url,
        "model": args.model,
        "endpoint": args.endpoint,
        "max_tokens": args.max_tokens,
        "prompt": args.prompt,
        "ignore_eos": args.ignore_eos,
        "requests_per_worker": rpw,
        "duration_s": duration,
        "levels": [asdict(lv) for lv in levels],
    }
    if args.json_out == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(result, f, indent=2)
        print(format_table(levels))
    return 0 if all(lv.errors == 0 for lv in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
