"""`create_app(settings)`: builds the registry, the engine pool and the service, and registers every route.

Objects live on `app.extensions["gateway"]`, never in module globals, so tests can build several apps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

from adapters import claude, ollama, openai, openai_responses, tgi, vllm
from gateway.auth import Access
from gateway.backends.context_size import choose_context
from gateway.backends.local import LocalBackend, estimate_bytes, vram_bytes
from gateway.backends.managed import ManagedBackend
from gateway.backends.pool import ModelPool, PoolSettings
from gateway.backends.upstream import UpstreamBackend
from gateway.browser_guard import BrowserGuard
from gateway.cache_warm import warm_route
from gateway.config import Settings, key_policies, load_settings, memory_budget_bytes, prompt_rules
from gateway.engine import huge_pages
from gateway.engine.cpu import cpu_features
from gateway.engine.executor import ExecutorSettings
from gateway.engine.llama import ContextParams, LoadParams, check_tensor_split
from gateway.engine.prompt_store import PromptCacheSettings
from gateway.keys import KeyLimits
from gateway.metrics import Metrics
from gateway.model_changes import ModelChanges
from gateway.models.ollama_store import default_store_root
from gateway.models.registry import ModelRegistry
from gateway.monitor import register_monitor
from gateway.request_log import log_request
from gateway.response_store import Conversations, open_store
from gateway.routes import (
    LongRequests,
    RouteOptions,
    register_fallbacks,
    register_routes,
)
from gateway.service import Service
from gateway.tracker import Tracker

log = logging.getLogger("gateway")

ROUTES = [*openai.ROUTES, *openai_responses.ROUTES, *claude.ROUTES, *ollama.ROUTES, *tgi.ROUTES, *vllm.ROUTES]
"""Every family's routes; where two share a path and method, the one with `accepts` is tried first."""


@dataclass
class Gateway:
    settings: Settings
    registry: ModelRegistry
    pool: ModelPool
    service: Service
    tracker: Tracker
    metrics: Metrics | None
    key_limits: KeyLimits
    access: Access | None = None  # set by create_app; a config reload replaces its keys


def build_gateway(settings: Settings) -> Gateway:
    registry = ModelRegistry.discover(settings.models_dirs, settings.models, settings.aliases,
                                      include_embedded=settings.embedded_model, ollama_root=store_root(settings),
                                      default_model=settings.default_model)
    check_tensor_split(settings.tensor_split, "tensor_split")
    for spec in registry.specs():
        check_tensor_split(spec.tensor_split, f"models: {spec.name}")
    pool_settings = PoolSettings(keep_alive=settings.keep_alive, max_loaded_models=settings.max_loaded_models,
                                 memory_budget=memory_budget_bytes(settings))

    rules = prompt_rules(settings)

    def start_backend(spec, executor_settings):  # a runner process per local model; upstream servers for others
        if spec.backend == "upstream":
            return UpstreamBackend(spec.name, spec.upstream, spec.n_ctx)
        if spec.backend == "managed":  # an engine server the gateway starts, then reaches as an upstream
            return ManagedBackend(spec)
        return LocalBackend(spec, executor_settings, settings.context_overflow, settings.log_level,
                            pool_settings.load_timeout, rules)

    pool = ModelPool(
        ExecutorSettings(parallel=settings.parallel, n_ctx=settings.n_ctx or None, n_batch=settings.n_batch,
                         prefill_chunk=settings.prefill_chunk, n_threads=settings.n_threads or None,
                         max_queue=settings.max_queue,
                         load=LoadParams(n_gpu_layers=settings.n_gpu_layers,
                                         tensor_split=[float(x) for x in settings.tensor_split] or None,
                                         huge_pages=settings.huge_pages),
                         context=ContextParams(settings.flash_attn, settings.cache_type_k, settings.cache_type_v),
                         prompt_cache=PromptCacheSettings(settings.prompt_cache_dir, settings.prompt_cache_min_tokens,
                                                          settings.prompt_cache_max_bytes),
                         parked_max_bytes=settings.parked_kv_max_bytes),
        pool_settings, load_fn=start_backend, estimate_fn=local_only(estimate_bytes), vram_fn=local_only(vram_bytes),
        context_fn=choose_context)
    changes = ModelChanges(registry, pool, store_root(settings), settings.ollama_registry, settings.store_changes,
                           settings.registry_private_networks, settings.registry_hosts)
    key_limits = KeyLimits()

    def finished(record) -> None:  # one log line, and the tokens a key used count against its limits
        log_request(record)
        if record.key is not None:
            key_limits.add_tokens(record.key, (record.prompt_tokens or 0) + record.tokens_generated)

    tracker = Tracker(settings.request_history, on_finished=finished)
    metrics = Metrics(tracker) if settings.metrics else None
    service = Service(registry, pool, settings.keepalive_seconds, changes, tracker,
                      Conversations(open_store(settings.responses_store)), settings.request_timeout)
    return Gateway(settings, registry, pool, service, tracker, metrics, key_limits)


def local_only(measure):
    """A model served elsewhere costs this machine no memory: the pool's estimates are for local models."""
    return lambda spec, *args: measure(spec, *args) if spec.backend == "local" else 0


def store_root(settings: Settings) -> str | None:
    """The Ollama store: 'auto' is $OLLAMA_MODELS, else ~/.ollama/models (read if it exists, created by the first
    pull or create)."""
    if settings.ollama_models == "off":
        return None
    return str(default_store_root()) if settings.ollama_models == "auto" else settings.ollama_models


def create_app(settings: Settings | None = None, preload: bool = True) -> Flask:
    settings = settings or load_settings()
    log.info("%s", cpu_features().describe())
    log.info("%s", huge_pages.describe(settings.huge_pages))
    gateway = build_gateway(settings)
    pinned = [gateway.registry.resolve(name) for name in settings.pinned]
    gateway.pool.settings.pinned = {spec.name for spec in pinned}
    if preload:
        for spec in {s.name: s for s in [gateway.registry.default(), *pinned]}.values():
            gateway.pool.preload(spec)
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["gateway"] = gateway
    access = Access(key_policies(settings), BrowserGuard(settings.host, settings.allowed_hosts,
                                                         settings.allowed_origins))
    gateway.access = access
    long_requests = LongRequests(settings.http_threads)
    register_routes(app, [*ROUTES, warm_route(ROUTES, openai.ROUTES[0].render_error)], gateway.service, access,
                    RouteOptions(settings.reasoning_field, long_requests, gateway.key_limits,
                                 keep_think_tags=settings.keep_think_tags))
    register_monitor(app, gateway.tracker, gateway.metrics, gateway.pool.view, access, settings, long_requests)
    register_fallbacks(app, openai.ROUTES[0])
    return app
