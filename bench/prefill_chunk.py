"""The chunked-prefill trade, measured: a newcomer's time to first token against the running streams' latency.

While `--streams` greedy streams generate, one request with a long prompt arrives. Each decode step may take at
most `prefill_chunk` of its prompt tokens, so a small chunk keeps the running streams' inter-token latency low
and makes the newcomer wait longer, and a large chunk does the opposite. For each chunk size this starts the
gateway, measures the newcomer's TTFT and the streams' inter-token gaps while its prompt is evaluated, and
prints a Markdown table for bench/README.md.

Usage: .venv/bin/python bench/prefill_chunk.py [--chunks 32,128,256,512] [--streams 15] [--prompt-tokens 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
NO_EOS = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation ids: keep the streams running


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(chunk: int, streams: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GATEWAY_PREFILL_CHUNK": str(chunk)}
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--parallel", str(streams + 1),
           "--threads", str(threads), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the gateway did not start")


def stream_tokens(url: str, stop: threading.Event, arrivals: list[float]) -> None:
    """One running stream: records the arrival time of every content chunk until `stop` is set."""
    body = {"model": MODEL, "prompt": "The history of the sea:", "max_tokens": 2000, "temperature": 0,
            "stream": True, "logit_bias": NO_EOS}
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic())
            if stop.is_set():
                return


def measure(url: str, streams: int, prompt_tokens: int) -> dict[str, float]:
    stop = threading.Event()
    arrivals: list[list[float]] = [[] for _ in range(streams)]
    workers = [threading.Thread(target=stream_tokens, args=(url, stop, a), daemon=True) for a in arrivals]
    for w in workers:
        w.start()
    while min(len(a) for a in arrivals) < 20:  # every stream is generating
        time.sleep(0.05)
    prompt = list(range(1000, 1000 + prompt_tokens))  # token ids: an exact prompt length, never cached
    sent = time.monotonic()
    r = requests.post(url + "/v1/completions", timeout=300, json={"model": MODEL, "prompt": prompt,
                                                                  "max_tokens": 1, "temperature": 0})
    done = time.monotonic()
    assert r.status_code == 200, r.text
    time.sleep(0.3)
    stop.set()
    gaps = [b - a for times in arrivals for a, b in pairwise(times) if sent <= a and b <= done]
    before = [b - a for times in arrivals for a, b in pairwise(times) if b < sent][-200:]
    for w in workers:
        w.join(timeout=5)
    return {"ttft_ms": (done - sent) * 1000, "itl_during_p50_ms": statistics.median(gaps) * 1000,
            "itl_during_max_ms": max(gaps) * 1000, "itl_before_p50_ms": statistics.median(before) * 1000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", default="32,128,256,512")
    p.add_argument("--streams", type=int, default=15)
    p.add_argument("--prompt-tokens", type=int, default=1500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        proc, url = start_gateway(chunk, args.streams, args.threads)
        try:
            result = measure(url, args.streams, args.prompt_tokens)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        rows.append((chunk, result))
        print(f"prefill_chunk {chunk}: {json.dumps({k: round(v, 1) for k, v in result.items()})}", file=sys.stderr)
    print(f"\n{args.streams} streams generating, one newcomer with a {args.prompt_tokens}-token prompt\n")
    print("| prefill_chunk | newcomer TTFT ms | streams' ITL p50 ms before | during its prefill: p50 | max |")
    print("|---|---|---|---|---|")
    for chunk, r in rows:
        print(f"| {chunk} | {r['ttft_ms']:.0f} | {r['itl_before_p50_ms']:.0f} | {r['itl_during_p50_ms']:.0f} "
              f"| {r['itl_during_max_ms']:.0f} |")


if __name__ == "__main__":
    main()
