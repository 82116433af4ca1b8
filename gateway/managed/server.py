"""`ManagedServer`: one engine server that the gateway starts, watches, restarts and stops.

It is ready only when the engine's health path answers 200 (vLLM binds its port long before its model has
loaded, and refuses connections until then). A heartbeat thread looks at it every `heartbeat_interval` seconds;
when the server died, whatever is left of its process group is stopped and it is started again on the same
port, so a client of its URL (the gateway's upstream backend) only sees a gap. Deaths in a row wait 1, 2, 4 ...
seconds (up to a minute) before the next start, so a server that cannot start does not spin.

Every live server of this Python process is listed by `list_endpoints()`; the servers are also stopped when the
interpreter exits, because they run in sessions of their own and would otherwise outlive it.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shlex
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Sequence

from gateway.managed.engines import Args, launch_command
from gateway.managed.engines import engine as conventions_of
from gateway.managed.process import Pidfile, ProcessGroup

log = logging.getLogger("gateway.managed")

BACKOFF_MAX = 60.0  # seconds: the longest wait between restarts of a server that keeps dying
STABLE_AFTER = 60.0  # seconds up and healthy after which a death counts as the first of a new series
READY_POLL = 0.25  # seconds between health probes while a server starts


class ServerError(RuntimeError):
    """A server that could not be made ready: it exited, or it was not healthy in time. Carries the log's tail."""


def default_output_dir() -> Path:
    """Logs and pidfiles outlive the gateway (the pidfiles must, to clean up after a crash): the user's state
    folder, not a temporary one."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "llm-gateway" / "managed"


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ManagedServer:
    """An engine server in a process group of its own.

    >>> with ManagedServer(engine="llama-cpp-python", model="model.gguf", output_dir="logs") as server:
    ...     OpenAI(base_url=server.base_url, api_key="-").chat.completions.create(...)

    `args` are the engine's extra arguments (a list, or a mapping: see `engines.to_flags`); `env` is added to
    the gateway's environment; `prefix` wraps the command (`nsys profile -o run1`, `numactl -N 0`, ...);
    `command` is the argv of engine `command`; `health_path` overrides the engine's. Each server writes
    `<name>.log` (its first line the command line; the previous run's log is kept as `<name>.log.1`) and
    `<name>.pid` to `output_dir`. `debug` logs the process tree before each stop and checks it is gone after.
    """

    def __init__(self, engine: str, model: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                 args: Args = None, env: Mapping[str, str] | None = None, output_dir: str | Path | None = None,
                 startup_timeout: float = 600.0, heartbeat_interval: float = 5.0,
                 prefix: str | Sequence[str] | None = None, debug: bool = False,
                 command: str | Sequence[str] | None = None, name: str | None = None,
                 health_path: str | None = None, stop_grace: float = 10.0,
                 env_vars: Mapping[str, str] | None = None):
        self.engine = engine
        self.model = model
        self.host = host
        self.port = port
        self.args = args
        # `env_vars` is the seed's server manager's name for `env`; either (or both) may be given
        self.env = {str(k): str(v) for k, v in {**(env_vars or {}), **(env or {})}.items()}
        self.output_dir = Path(output_dir) if output_dir is not None else default_output_dir()
        self.startup_timeout = startup_timeout
        self.heartbeat_interval = heartbeat_interval
        self.prefix = shlex.split(prefix) if isinstance(prefix, str) else list(prefix or [])
        self.debug = debug
        self.command = command
        self.name = _file_name(name) if name else _default_name(engine, model, command)
        conventions = conventions_of(engine)
        self.health_path = health_path or conventions.health_path
        self.concurrency = conventions.concurrency  # requests the engine serves at once (None: no limit)
        self.stop_grace = stop_grace
        launch_command(engine, model, host, port or 0, args, command)  # a bad configuration fails here, not later
        self.argv: list[str] = []
        self.health = "stopped"  # starting | ok | unhealthy | restarting | stopped
        self.restarts = 0
        self.deaths: deque[dict[str, Any]] = deque(maxlen=10)  # {"at": epoch seconds, "reason": ...}
        self._group: ProcessGroup | None = None
        self._failures = 0  # deaths in a row, for the backoff
        self._ready_at = 0.0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._pidfile = Pidfile(self.output_dir / f"{self.name}.pid")

    @property
    def log_file(self) -> Path:
        return self.output_dir / f"{self.name}.log"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, as the openai SDK takes it (`url` is the server's root)."""
        return self.url + "/v1"

    @property
    def pid(self) -> int | None:
        group = self._group
        return group.pid if group else None

    @property
    def endpoint(self) -> dict[str, Any]:
        return {"name": self.name, "engine": self.engine, "model": self.model, "url": self.base_url,
                "pid": self.pid, "health": self.health, "log_file": str(self.log_file), "restarts": self.restarts,
                "command": shlex.join(self.argv), "concurrency": self.concurrency}

    def start(self) -> ManagedServer:
        """Start the server and wait until it is healthy; raises ServerError (with the log's tail) if it exits
        or is not healthy within `startup_timeout`. Calling it on a running server does nothing."""
        with self._lock:
            if self._group is not None:
                return self
            _claim(self)
            try:
                self._pidfile.clean_up(self.stop_grace)
                self.output_dir.mkdir(parents=True, exist_ok=True)
                if self.log_file.exists():
                    self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
                self.port = self.port or free_port(self.host)
                self.argv = self.prefix + launch_command(self.engine, self.model, self.host, self.port, self.args,
                                                         self.command)
                self._stopping.clear()
                self._launch("")
                self._wait_ready()
            except BaseException:
                self._end()
                raise
            self._heartbeat = threading.Thread(target=self._watch, name=f"managed-{self.name}", daemon=True)
            self._heartbeat.start()
            return self

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, `stop_grace` seconds, SIGKILL) and check that none of it is
        left. A start in progress is abandoned. Safe to call more than once."""
        self._stopping.set()
        with self._lock:
            heartbeat = self._heartbeat
            if heartbeat is not None and heartbeat is not threading.current_thread():
                heartbeat.join()
            self._heartbeat = None
            self._end()

    def healthy(self) -> bool:
        """Whether the health path answers 200 now. The probe bypasses any HTTP proxy of the environment: the
        server is on a local address."""
        if self.port is None:
            return False
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url + self.health_path, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedServer({self.name!r}, {self.engine}, {self.url}, pid={self.pid}, {self.health})"

    def _launch(self, note: str) -> None:
        self.health = "starting"
        self._group = ProcessGroup(self.argv, self.env, self.log_file, note)
        self._pidfile.write(self._group)
        log.info("started %s (pid %d): %s", self.name, self._group.pid, shlex.join(self.argv))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not self.healthy():
            if self._stopping.is_set():
                raise ServerError(f"{self.name}: stopped while starting")
            if not self._group.alive():
                raise ServerError(f"{self.name}: exited with code {self._group.popen.returncode} while starting; "
                                  f"{self.log_file} ends with:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise ServerError(f"{self.name}: not healthy at {self.url}{self.health_path} within "
                                  f"{self.startup_timeout:.0f} s; {self.log_file} ends with:\n{self.log_tail()}")
            time.sleep(READY_POLL)
        self.health = "ok"
        self._ready_at = time.monotonic()
        log.info("%s is ready at %s", self.name, self.url)

    def _end(self) -> None:
        """Stop the group (if any), forget it, and leave the list of live servers."""
        group, self._group = self._group, None
        try:
            if group is not None:
                group.stop(self.stop_grace, self.debug)
                self._pidfile.remove()
                log.info("stopped %s (pid %d) and every process of its group", self.name, group.pid)
        finally:
            self.health = "stopped"
            _release(self)

    def _watch(self) -> None:
        """The heartbeat: a dead server is restarted; a live one's health is refreshed."""
        while not self._stopping.wait(self.heartbeat_interval):
            if self._group.alive():
                self.health = "ok" if self.healthy() else "unhealthy"
                if self.health == "ok" and time.monotonic() - self._ready_at >= STABLE_AFTER:
                    self._failures = 0
                continue
            reason = f"exit code {self._group.popen.returncode}"
            log.warning("%s (pid %d) died: %s", self.name, self._group.pid, reason)
            self.deaths.append({"at": time.time(), "reason": reason})
            self._restart()

    def _restart(self) -> None:
        """Stop what the dead leader left in its group (vLLM's workers outlive a killed API server), wait out the
        backoff, start again; repeat until it is ready or the server is stopped."""
        self.health = "restarting"
        while not self._stopping.is_set():
            self._group.stop(self.stop_grace, self.debug)
            delay = restart_delay(self._failures)
            self._failures += 1
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            try:
                self._launch(f"# restart {self.restarts} after: {self.deaths[-1]['reason']}\n")
                self._wait_ready()
                return
            except (ServerError, OSError) as exc:
                if self._stopping.is_set():  # stopped while it was coming back: not a failure of the server
                    return
                log.warning("%s: restart %d failed: %s", self.name, self.restarts, exc)
                self.deaths.append({"at": time.time(), "reason": f"restart failed: {exc}"})

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except FileNotFoundError:
            return ""


def restart_delay(failures: int) -> float:
    """Seconds before the next start after `failures` deaths in a row: none after the first, then 1, 2, 4 ...
    up to BACKOFF_MAX."""
    return min(2.0 ** (failures - 1), BACKOFF_MAX) if failures else 0.0


def _default_name(engine_name: str, model: str | None, command: str | Sequence[str] | None) -> str:
    """A name that stays the same across gateway runs (the pidfile is found by it): the engine and the model's
    file or repository name."""
    if model:
        base = Path(model).stem if model.endswith(".gguf") else model.rstrip("/").rsplit("/", 1)[-1]
    else:
        argv = shlex.split(command) if isinstance(command, str) else list(command or [])
        base = Path(str(argv[0])).name if argv else ""
    return _file_name(f"{engine_name}-{base}".strip("-"))


def _file_name(name: str) -> str:
    """`name` as a file name in `output_dir`: a model name such as `qwen2.5:7b` or `org/model` must not become a
    path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "server"


_live: dict[str, ManagedServer] = {}  # every started server of this process, by name (one per pidfile)
_live_lock = threading.Lock()


def _claim(server: ManagedServer) -> None:
    with _live_lock:
        other = _live.get(server.name)
        if other is not None and other is not server:
            raise ValueError(f"a managed server named {server.name!r} already runs ({other!r}); pass `name`")
        _live[server.name] = server


def _release(server: ManagedServer) -> None:
    with _live_lock:
        if _live.get(server.name) is server:
            del _live[server.name]


def list_endpoints() -> list[dict[str, Any]]:
    """Every live managed server of this process: name, engine, model, URL, pid, health, log file, restarts."""
    with _live_lock:
        servers = list(_live.values())
    return [s.endpoint for s in servers]


def create_server(backend: str, **kwargs: Any) -> ManagedServer:
    """Start a server of engine `backend` (vllm, sglang, llama-server, llama-cpp-python, command) and return it,
    ready; the keyword arguments are `ManagedServer`'s."""
    return ManagedServer(engine=backend, **kwargs).start()


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live.values())
    for server in servers:
        server.stop()
