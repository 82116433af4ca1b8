"""The managed backend: a `backend: managed` model, whose engine server (vLLM, SGLang, llama-server,
llama-cpp-python or any command) the gateway starts when the model is loaded and stops when it is unloaded.

Loading starts a `ManagedServer` and waits until it is healthy; from then on the model is an upstream model with
one URL, so every request goes through `UpstreamBackend` (the same translation, streaming and failover rules).
When the server dies, its heartbeat restarts it on the same port; meanwhile the upstream's circuit for that URL
is open, and requests wait up to their first-byte budget for it to come back, then get `unavailable`.
"""

from __future__ import annotations

import logging

from gateway.backends.base import Backend, BackendStatus, GenerationRun
from gateway.backends.upstream import UpstreamBackend
from gateway.managed.engines import context_size, served_name
from gateway.managed.server import ManagedServer
from gateway.models.registry import ModelSpec
from gateway.models.upstream_config import UpstreamConfig
from gateway.types import ErrorKind, GatewayError, InternalRequest, TokenizeResult

log = logging.getLogger("gateway.backends.managed")


class ManagedBackend(Backend):
    """Starts the server of `spec.managed` (blocking until it is healthy) and serves through it."""

    def __init__(self, spec: ModelSpec):
        config = spec.managed
        self.name = spec.name
        self.server = ManagedServer(
            engine=config.engine, model=config.model, port=config.port, args=config.args, env=config.env,
            output_dir=config.output_dir, startup_timeout=config.startup_timeout,
            heartbeat_interval=config.heartbeat_interval, prefix=config.prefix, debug=config.debug,
            command=config.command, name=spec.name, health_path=config.health_path)
        try:
            self.server.start()
        except (OSError, RuntimeError, ValueError) as exc:  # ServerError, a pidfile still owned, a name in use
            raise GatewayError(ErrorKind.UNAVAILABLE, f"The {config.engine} server of `{spec.name}` did not start: "
                                                      f"{exc}", code="managed_start_failed",
                               details={"model": spec.name}) from exc
        upstream = UpstreamConfig(urls=(self.server.url,), model=served_name(config.engine, config.model, config.args),
                                  health_interval=config.heartbeat_interval)
        try:
            self.upstream = UpstreamBackend(spec.name, upstream,
                                            n_ctx=spec.n_ctx or context_size(config.engine, config.args))
        except BaseException:
            self.server.stop()
            raise

    @property
    def n_ctx(self) -> int:  # the upstream learns it from the server's model list
        return self.upstream.n_ctx

    def generate(self, req: InternalRequest, spec: ModelSpec) -> GenerationRun:
        return self.upstream.generate(req, spec)

    def embed(self, req: InternalRequest, spec: ModelSpec, on_started=None) -> tuple[list[list[float]], int]:
        return self.upstream.embed(req, spec, on_started)

    def tokenize(self, req: InternalRequest, spec: ModelSpec) -> TokenizeResult:
        return self.upstream.tokenize(req, spec)

    def detokenize(self, tokens: list[int]) -> str:
        return self.upstream.detokenize(tokens)

    def describe(self) -> BackendStatus:
        """The upstream's view (requests in flight, the URL's circuit) with the server's own: its health (which
        says `restarting` while the heartbeat brings it back), pid, restarts, deaths, engine and log file."""
        status = self.upstream.describe()
        server = self.server
        status.kind = "managed"
        status.parallel = server.concurrency or 0
        if server.health != "ok":
            status.health = server.health
        status.pid = server.pid
        status.restarts = server.restarts
        status.crashes = list(server.deaths)
        status.note = f"{server.engine} server at {server.url}, log {server.log_file}"
        endpoint = server.endpoint
        status.endpoints = [{**e, "engine": server.engine, "pid": endpoint["pid"], "log_file": endpoint["log_file"],
                             "command": endpoint["command"]} for e in status.endpoints]
        return status

    def close(self) -> None:
        """Unloading stops the server's whole process group; a stop that leaves processes behind is logged
        (the model is unloaded either way)."""
        self.upstream.close()
        try:
            self.server.stop()
        except RuntimeError as exc:  # OrphanError: processes that survived SIGKILL
            log.error("model %s: %s", self.name, exc)
