"""What a JSON-schema grammar costs: the constrained stream itself, and the unconstrained streams beside it.

The decode loop samples every sequence of a batch in turn on one thread, so a slow grammar on one sequence
lengthens the step of all of them. This script measures, in one run on an in-process `Executor` (no HTTP, so
only the engine's share is seen), alternating the scenarios `--rounds` times:

(a) c = 1: one unconstrained stream, then one stream constrained by a JSON schema: tok/s of each.
(b) c = `--parallel`: all streams unconstrained, then the same with one of them constrained: the per-stream
    tok/s of the unconstrained streams in both, and their ratio (the target: no more than 5% slower).
(c) The grammar's own cost per token: the time `SamplerChain.sample` takes with and without the grammar, on
    the same logits, greedy and at temperature 0.8 (sampled tokens are rejected by the grammar more often).

Every job generates `--max-tokens` (the schema asks for forty people, more than fit) and is resubmitted at once
(closed loop), for `--seconds` per scenario. Throughput drifts by ±10% over minutes on a small machine, so the
ratios are taken within each round (the scenarios of a round run back to back) and their median is reported.

Usage:
    .venv/bin/python bench/grammar.py                     # 3 rounds, 15 s per scenario, parallel 8
    .venv/bin/python bench/grammar.py --rounds 1 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp

from gateway.engine.executor import Executor, ExecutorSettings
from gateway.engine.grammar import constraint_grammar
from gateway.engine.jobs import Finished, GenerationJob, Piece
from gateway.engine.llama import new_context
from gateway.engine.sampling import GrammarCache, SamplerChain
from gateway.models.embedded import embedded_model_path
from gateway.types import Constraint, SamplingParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 5},
    },
    "required": ["name", "age", "city", "hobbies"],
}
SCHEMA = {"type": "object", "properties": {"people": {"type": "array", "items": PERSON, "minItems": 40}},
          "required": ["people"]}
"""Forty people: no document can end before `--max-tokens`, so constrained and free jobs are equally long and
only the grammar differs (a document that ended early would restart its job more often)."""
PROMPT = ("<|im_start|>user\nDescribe forty people as JSON: name, age, city, hobbies.<|im_end|>\n"
          "<|im_start|>assistant\n")
SAMPLING = SamplingParams(temperature=0.8, seed=7)


def closed_loop(executor: Executor, prompt: list[int], grammars: list[str | None], seconds: float,
                max_tokens: int) -> list[float]:
    """Run one closed-loop stream per entry of `grammars` for `seconds`; each stream's tokens per second."""
    sink: queue.SimpleQueue = queue.SimpleQueue()
    counts = [0] * len(grammars)

    def submit(stream: int) -> None:
        job = GenerationJob(prompt, SAMPLING, max_tokens=max_tokens, grammar=grammars[stream])
        executor.submit(job, sink, stream)

    for stream in range(len(grammars)):
        submit(stream)
    started = time.monotonic()
    end = started + seconds
    running = len(grammars)
    while running:
        stream, event = sink.get(timeout=120)
        if isinstance(event, Piece):
            if time.monotonic() < end:
                counts[stream] += 1
        elif isinstance(event, Finished):
            if event.error is not None:
                raise event.error
            if time.monotonic() < end:
                submit(stream)
            else:
                running -= 1
    elapsed = seconds
    return [c / elapsed for c in counts]


def sample_cost(executor: Executor, grammar: str, temperature: float, tokens: int = 200) -> tuple[float, float]:
    """Seconds per `sample` call without and with the grammar, on the same decoded prompt (greedy: the same
    text; sampled: each run its own)."""
    model = executor.model
    ctx = new_context(model, 2048, 512, 1, executor.n_threads)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    prompt = model.tokenize(PROMPT, True, True)
    grammars = GrammarCache(model.vocab)
    results = []
    try:
        for constrained in (False, True):
            chain = SamplerChain(model.vocab, model.n_vocab, SamplingParams(temperature=temperature, seed=3),
                                 grammar=grammars.new(grammar) if constrained else None)
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, -1, -1)
            feed, pos, spent, n = prompt, 0, 0.0, 0
            while n < tokens:
                for i, token in enumerate(feed):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos + i, 1
                    batch.seq_id[i][0], batch.logits[i] = 0, i == len(feed) - 1
                batch.n_tokens = len(feed)
                llama_cpp.llama_decode(ctx, batch)
                pos += len(feed)
                t0 = time.perf_counter()
                token = chain.sample(ctx, len(feed) - 1)
                spent += time.perf_counter() - t0
                n += 1
                if token in model.eog:  # start over from the prompt: keep measuring mid-document tokens
                    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, -1, -1)
                    chain.free()
                    chain = SamplerChain(model.vocab, model.n_vocab, SamplingParams(temperature=temperature),
                                         grammar=grammars.new(grammar) if constrained else None)
                    feed, pos = prompt, 0
                else:
                    feed = [token]
            chain.free()
            results.append(spent / n)
    finally:
        grammars.free()
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return results[0], results[1]


def _median_ratio(tops: list[float], bottoms: list[float]) -> float:
    return statistics.median(t / b for t, b in zip(tops, bottoms, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="0: physical cores")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    grammar = constraint_grammar(Constraint("json_schema", SCHEMA, "bench"))
    executor = Executor("bench", embedded_model_path(), ExecutorSettings(
        parallel=args.parallel, n_ctx=8192, n_threads=args.threads or None, max_queue=1024))
    prompt = executor.model.tokenize(PROMPT, True, True)
    rows: dict[str, list[float]] = {k: [] for k in ("single_free", "single_json", "batch_free", "batch_beside")}
    try:
        for round_no in range(args.rounds):
            free1 = closed_loop(executor, prompt, [None], args.seconds, args.max_tokens)
            json1 = closed_loop(executor, prompt, [grammar], args.seconds, args.max_tokens)
            free = closed_loop(executor, prompt, [None] * args.parallel, args.seconds, args.max_tokens)
            mixed = closed_loop(executor, prompt, [grammar] + [None] * (args.parallel - 1), args.seconds,
                                args.max_tokens)
            rows["single_free"].append(free1[0])
            rows["single_json"].append(json1[0])
            rows["batch_free"].append(statistics.mean(free[1:]))
            rows["batch_beside"].append(statistics.mean(mixed[1:]))
            print(f"round {round_no + 1}: c=1 free {free1[0]:.1f} json {json1[0]:.1f} tok/s; c={args.parallel} "
                  f"unconstrained per stream {rows['batch_free'][-1]:.2f} alone, "
                  f"{rows['batch_beside'][-1]:.2f} beside a constrained one", flush=True)
        costs = {f"t={t}": sample_cost(executor, grammar, t) for t in (0.0, 0.8)}
    finally:
        executor.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "rounds": args.rounds, "seconds": args.seconds, "parallel": args.parallel, "medians": med,
        "json_over_free_c1": _median_ratio(rows["single_json"], rows["single_free"]),
        "beside_over_alone": _median_ratio(rows["batch_beside"], rows["batch_free"]),
        "sample_ms": {k: {"free": a * 1e3, "json": b * 1e3, "grammar_cost": (b - a) * 1e3}
                      for k, (a, b) in costs.items()},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
