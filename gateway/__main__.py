"""Command line: `serve` (gunicorn, one gthread worker), `models` (what would be served), `check` (settings)."""

from __future__ import annotations

import argparse
import logging
import math
import runpy
import signal
import sys
from typing import Any, Callable

from gateway.config import ConfigError, Settings, describe, load_settings
from gateway.engine.cpu import cpu_features
from gateway.engine.huge_pages import describe as describe_huge_pages
from gateway.request_log import JsonFormatter


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "start the server"), ("models", "list the models found"),
                            ("check", "validate and print the settings")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", help="YAML settings file (also GATEWAY_CONFIG)")
        cmd.add_argument("--models-dir", "--model-dir", dest="models_dirs", action="extend", nargs="+",
                         metavar="DIR", help="folders of GGUF files (--model-dir: the seed service's name)")
        cmd.add_argument("--debug", action="store_true", help="log at debug level (as --log-level debug)")
        cmd.add_argument("--default-tensor-split", dest="tensor_split", metavar="SHARES",
                         help="how models that set none split across GPUs, e.g. 3,1")
        if name == "serve":
            cmd.add_argument("--host")
            cmd.add_argument("--port", type=int)
            cmd.add_argument("--parallel", type=int, help="sequences decoded together per model")
            cmd.add_argument("--threads", dest="n_threads", type=int, help="CPU threads for decoding")
            cmd.add_argument("--n-ctx", dest="n_ctx", type=int, help="context size per model")
            cmd.add_argument("--log-level", dest="log_level")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    keys = ("host", "port", "parallel", "n_threads", "n_ctx", "log_level", "models_dirs", "tensor_split")
    overrides: dict[str, Any] = {k: getattr(args, k, None) for k in keys}
    if args.debug:
        overrides["log_level"] = "debug"
    return load_settings(args.config, overrides=overrides)


def serve(settings: Settings, load: Callable[[], Settings]) -> None:
    """gunicorn with one worker; `load` reads the settings again for a SIGHUP reload."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    from gateway import reload, shutdown, time_slice
    from gateway.app import create_app

    class HupToWorker(Arbiter):
        """The master passes SIGHUP on to the worker, which reloads the config (gateway/reload.py), instead of
        restarting it: a restart would end every stream and runner."""

        def handle_hup(self) -> None:
            self.log.info("SIGHUP: the worker reloads its config")
            self.kill_workers(signal.SIGHUP)

    def worker_init(worker) -> None:
        shutdown.install(worker, settings.shutdown_grace)
        reload.install(worker, load)

    class GatewayServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in runpy.run_path(_gunicorn_conf()).items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("threads", settings.http_threads)
            self.cfg.set("loglevel", settings.log_level)
            self.cfg.set("graceful_timeout", math.ceil(settings.shutdown_grace + shutdown.MARGIN))
            self.cfg.set("post_worker_init", worker_init)
            self.cfg.set("worker_exit", lambda server, worker: shutdown.stop_runners(worker))

        def load(self):  # in the worker, before its threads start: they inherit the slice
            slice_taken = time_slice.shorten(settings.http_slice_us)
            logging.getLogger("gateway").info("HTTP threads' time slice: %s", slice_taken)
            return create_app(settings)

        def run(self) -> None:
            try:
                HupToWorker(self).run()
            except RuntimeError as exc:  # as gunicorn's own run: a bind that fails, a worker that cannot boot
                print(f"\nError: {exc}\n", file=sys.stderr)
                sys.exit(1)

    GatewayServer().run()


def _gunicorn_conf() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parent.parent / "config" / "gunicorn.conf.py")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # No format shows where a line was logged from, or the thread: the logging HOWTO's "Optimization" turns their
    # collection off (a request's log line cost a third of a cheap request's CPU). gunicorn's own lines show the
    # process id, so that is kept.
    logging._srcfile = None
    logging.logThreads = logging.logMultiprocessing = False
    if settings.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    for note in settings.notes:
        logging.getLogger("gateway.config").warning("%s", note)
    if args.command in ("check", "models"):
        from gateway.models.registry import ModelRegistry

        try:
            registry = ModelRegistry.discover(settings.models_dirs, settings.models, settings.aliases,
                                              include_embedded=settings.embedded_model,
                                              default_model=settings.default_model)
        except ValueError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        if args.command == "check":
            print(describe(settings))
            print(f"# {cpu_features().describe()}")
            print(f"# {describe_huge_pages(settings.huge_pages)}")
            print(f"# {gpu_offload()}")
            return 0
        for spec in registry.specs():
            info = registry.info(spec)
            aliases = f"  (aliases: {', '.join(info.aliases)})" if info.aliases else ""
            print(f"{info.name}\t{info.architecture}\t{info.quantization}\t{info.path}{aliases}")
        return 0
    serve(settings, lambda: _settings(args))
    return 0


def gpu_offload() -> str:
    """Whether this build of llama.cpp can put layers on a GPU: a CPU-only wheel cannot, whatever n_gpu_layers
    says (the CMake switches in the Makefile and README choose the build)."""
    from gateway.engine.llama import supports_gpu_offload

    if supports_gpu_offload():
        return "GPU offload: yes (n_gpu_layers applies)"
    return "GPU offload: no: this llama.cpp build is CPU-only (n_gpu_layers has no effect)"


if __name__ == "__main__":
    sys.exit(main())
