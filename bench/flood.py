"""A paced flood of cheap API requests, to measure how much a server's decode loop suffers from API traffic.

A server that shares two cores between decoding and its HTTP side loses tokens whenever it answers anything,
even a model list. This client sends cheap requests at a fixed rate (open loop: request i is due at
``t0 + i / rate`` whatever the server does), so a slow server cannot slow the offered load down the way a
closed loop would; only ``--workers`` requests may be in flight at once, and a request more than ``--max-lag``
seconds overdue is dropped rather than sent in a burst, so the offered load stays bounded. The achieved rate,
errors, latencies and this process's own CPU are reported, because a flood that did not reach its target, or
that took a core for itself, changes what the decode figure means.

It runs as a process of its own (``bench/run.py --flood`` starts it), so its CPU is not the load generator's and
is reported on its own. It sends to loopback only, and stops at whichever comes first: ``--max-requests``,
``--max-seconds``, a line on stdin, or stdin closing (its parent died). The stop line may carry a window
``stop T0 T1`` in ``time.monotonic()`` seconds (system-wide on Linux), and the rate achieved within that
window (the flooded load level) is reported next to the overall one.

The routes rotate request by request. For the gateway: Ollama's model list, Anthropic's count_tokens and
Prometheus metrics. For llama-server the same three kinds of work, answered by its HTTP threads without
touching the decode loop: the model list, tokenize and props (its /metrics needs ``--metrics`` and posts a
task to the decode loop, so it is left out).

Usage (normally started by bench/run.py):
    python bench/flood.py --base-url http://127.0.0.1:8080 --server gateway --rate 200 --max-seconds 30
Prints one JSON object on stdout at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import select
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

MODEL_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Call:
    """One cheap request: method, path, JSON body (or None) and extra headers. A `{n}` in the body becomes the
    request's number, so a text to count is new each time, as a client's last message is (a server may keep the
    tokens of text it has seen)."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


def routes_for(server: str, model: str = MODEL_NAME) -> list[Call]:
    """The rotation for one server kind (see the module docstring for why these routes)."""
    if server == "gateway":
        count = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi {n}"}]}).encode()
        return [
            Call("GET /api/tags", "GET", "/api/tags"),
            Call("POST /v1/messages/count_tokens", "POST", "/v1/messages/count_tokens", count,
                 (("anthropic-version", "2023-06-01"), ("Content-Type", "application/json"))),
            Call("GET /metrics", "GET", "/metrics"),
        ]
    if server == "llama-server":
        return [
            Call("GET /v1/models", "GET", "/v1/models"),
            Call("POST /tokenize", "POST", "/tokenize", json.dumps({"content": "hi {n}"}).encode(),
                 (("Content-Type", "application/json"),)),
            Call("GET /props", "GET", "/props"),
        ]
    raise ValueError(f"unknown server kind: {server}")


def loopback(base_url: str) -> tuple[str, int]:
    """Host and port of a loopback URL; anything else is refused (this tool must not flood a real host)."""
    url = urllib.parse.urlsplit(base_url)
    host = url.hostname or ""
    if url.scheme != "http" or host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"flood.py only targets http://127.0.0.1 / localhost, not {base_url}")
    return host, url.port or 80


def send(host: str, port: int, call: Call, timeout: float, n: int = 0) -> tuple[int | None, str | None]:
    """Request number `n` on a fresh connection (as bench/loadgen.py does); returns (status, error)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    body = call.body.replace(b"{n}", str(n).encode()) if call.body else call.body
    try:
        conn.request(call.method, call.path, body=body, headers=dict(call.headers))
        resp = conn.getresponse()
        resp.read()
        return resp.status, None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    return data[min(len(data) - 1, int(round((len(data) - 1) * q / 100.0)))]


class Flood:
    """Open-loop pacing with a bounded number of worker threads; records (due, sent, done, ok, route) per request."""

    def __init__(self, host: str, port: int, calls: list[Call], rate: float, workers: int, max_requests: int,
                 max_seconds: float, max_lag: float, timeout: float) -> None:
        self.host, self.port, self.calls = host, port, calls
        self.rate, self.workers, self.max_requests = rate, workers, max_requests
        self.max_seconds, self.max_lag, self.timeout = max_seconds, max_lag, timeout
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self.t0 = 0.0
        self.records: list[tuple[float, float, bool, int, str | None]] = []  # (sent, done, ok, route, error)
        self.dropped_late = 0

    def _claim(self) -> int | None:
        with self._lock:
            if self._next >= self.max_requests:
                return None
            i = self._next
            self._next += 1
            return i

    def _worker(self) -> None:
        while not self.stop.is_set():
            i = self._claim()
            if i is None:
                return
            due = self.t0 + i / self.rate
            if due - self.t0 >= self.max_seconds:
                return
            delay = due - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            if time.monotonic() - due > self.max_lag:  # every worker was busy: shed, do not burst
                with self._lock:
                    self.dropped_late += 1
                continue
            route = i % len(self.calls)
            sent = time.monotonic()
            _status, error = send(self.host, self.port, self.calls[route], self.timeout, i)
            done = time.monotonic()
            with self._lock:
                self.records.append((sent, done, error is None, route, error))

    def run(self) -> None:
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        deadline = self.t0 + self.max_seconds + self.timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.stop.set()

    def summary(self, window: tuple[float, float] | None) -> dict:
        with self._lock:
            records = list(self.records)
        end = max((r[1] for r in records), default=self.t0)
        elapsed = max(1e-9, end - self.t0)
        ok = [r for r in records if r[2]]
        errors: dict[str, int] = {}
        for r in records:
            if not r[2]:
                errors[r[4] or "?"] = errors.get(r[4] or "?", 0) + 1
        per_route = {c.name: {"ok": 0, "errors": 0} for c in self.calls}
        for r in records:
            per_route[self.calls[r[3]].name]["ok" if r[2] else "errors"] += 1
        lat = [(r[1] - r[0]) * 1000 for r in ok]
        out = {
            "target_rate": self.rate, "workers": self.workers, "max_requests": self.max_requests,
            "max_seconds": self.max_seconds, "routes": [c.name for c in self.calls],
            "requests": len(records), "ok": len(ok), "errors": len(records) - len(ok),
            "dropped_late": self.dropped_late, "elapsed_s": elapsed,
            "achieved_rate": len(ok) / elapsed, "error_samples": dict(list(errors.items())[:5]),
            "per_route": per_route, "latency_p50_ms": percentile(lat, 50), "latency_p99_ms": percentile(lat, 99),
            "latency_max_ms": max(lat, default=None),
        }
        if window is not None:
            t0, t1 = window
            inside = [r for r in ok if t0 <= r[1] <= t1]
            out["window_s"] = t1 - t0
            out["window_ok"] = len(inside)
            out["window_errors"] = sum(1 for r in records if not r[2] and t0 <= r[1] <= t1)
            out["window_rate"] = len(inside) / (t1 - t0) if t1 > t0 else None
        return out


def watch_stdin(flood: Flood, window_box: list) -> None:
    """A line on stdin (optionally `stop T0 T1`) or EOF stops the flood: run.py ends it when the level ends."""
    line = sys.stdin.readline()
    parts = line.split()
    if len(parts) == 3 and parts[0] == "stop":
        window_box.append((float(parts[1]), float(parts[2])))
    flood.stop.set()


def preflight(host: str, port: int, calls: list[Call], timeout: float) -> dict[str, str | None]:
    """Each route once before the clock starts: a route this server lacks fails the run at once, not 6000 times."""
    return {c.name: send(host, port, c, timeout)[1] for c in calls}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="loopback server root, e.g. http://127.0.0.1:8080")
    p.add_argument("--server", choices=["gateway", "llama-server"], required=True, help="which route rotation")
    p.add_argument("--model", default=MODEL_NAME)
    p.add_argument("--rate", type=float, default=200.0, help="target requests per second (default 200)")
    p.add_argument("--workers", type=int, default=32, help="most requests in flight at once (default 32)")
    p.add_argument("--max-requests", type=int, default=20000, help="never send more than this (default 20000)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="never flood longer than this (default 120)")
    p.add_argument("--max-lag", type=float, default=1.0,
                   help="drop a request this many seconds overdue instead of sending it late (default 1)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request socket timeout (default 10 s)")
    p.add_argument("--no-stdin", action="store_true", help="ignore stdin; run until a bound is reached")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.workers < 1:
        p.error("--rate must be positive and --workers at least 1")

    host, port = loopback(args.base_url)
    calls = routes_for(args.server, args.model)
    failed = {name: err for name, err in preflight(host, port, calls, args.timeout).items() if err}
    if failed:
        print(json.dumps({"error": "preflight failed", "routes": failed}), flush=True)
        return 2
    flood = Flood(host, port, calls, args.rate, args.workers, args.max_requests, args.max_seconds, args.max_lag,
                  args.timeout)
    window_box: list[tuple[float, float]] = []
    if not args.no_stdin:
        threading.Thread(target=watch_stdin, args=(flood, window_box), daemon=True).start()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    print("flooding", file=sys.stderr, flush=True)  # run.py waits for this line before it starts the level
    flood.run()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    out = flood.summary(window_box[0] if window_box else None)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out["client_cpu_s"] = cpu
    out["client_cpu_cores"] = cpu / out["elapsed_s"]
    print(json.dumps(out), flush=True)
    return 0


class FloodProcess:
    """The parent's handle on a flood started as a child process (what bench/run.py uses)."""

    def __init__(self, base_url: str, server: str, rate: float, max_seconds: float, workers: int = 32,
                 max_lag: float = 1.0, ready_timeout: float = 30.0) -> None:
        self.cmd = [sys.executable, __file__, "--base-url", base_url, "--server", server, "--rate", str(rate),
                    "--workers", str(workers), "--max-seconds", str(max_seconds),
                    "--max-requests", str(int(rate * max_seconds) + 1), "--max-lag", str(max_lag)]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stderr], [], [], ready_timeout)
        # the first stderr line is "flooding"; EOF (an empty line) means preflight failed and stdout says why
        self.started = bool(ready) and self.proc.stderr.readline().strip() == b"flooding"

    def stop(self, window: tuple[float, float] | None = None, timeout: float = 60.0) -> dict:
        """End the flood (reaping it, so its CPU shows up in the parent's children times) and return its report."""
        line = f"stop {window[0]!r} {window[1]!r}\n" if window else "stop\n"
        try:
            out, err = self.proc.communicate(line.encode(), timeout=timeout)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self.proc.kill()
            out, err = self.proc.communicate()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            report = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            report = {}
        if not report or self.proc.returncode not in (0, None):
            report.setdefault("error", f"flood exited with {self.proc.returncode}: "
                                       + err.decode(errors="replace")[-500:])
        report["command"] = self.cmd
        return report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
