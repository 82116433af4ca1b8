"""`create_app(settings)`: builds the registry, the engine pool and the service, and registers every route.

Objects live on `app.extensions["gateway"]`, never in module globals, so tests can build several apps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

from adapters import openai
from gateway.config import Settings, load_settings
from gateway.engine.executor import ExecutorSettings
from gateway.engine.pool import ModelPool
from gateway.models.registry import ModelRegistry
from gateway.routes import register_fallbacks, register_routes
from gateway.service import Service

log = logging.getLogger("gateway")

ROUTES = [*openai.ROUTES]


@dataclass
class Gateway:
    settings: Settings
    registry: ModelRegistry
    pool: ModelPool
    service: Service


def build_gateway(settings: Settings) -> Gateway:
    registry = ModelRegistry.discover(settings.models_dirs, settings.models, settings.aliases,
                                      include_embedded=settings.embedded_model)
    pool = ModelPool(ExecutorSettings(
        parallel=settings.parallel, n_ctx=settings.n_ctx or None, n_batch=settings.n_batch,
        prefill_chunk=settings.prefill_chunk, n_threads=settings.n_threads or None, max_queue=settings.max_queue))
    return Gateway(settings, registry, pool, Service(registry, pool, settings.keepalive_seconds))


def create_app(settings: Settings | None = None, preload: bool = True) -> Flask:
    settings = settings or load_settings()
    gateway = build_gateway(settings)
    if preload:
        gateway.pool.get(gateway.registry.default())
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["gateway"] = gateway
    register_routes(app, ROUTES, gateway.service, settings.api_keys)
    register_fallbacks(app, openai.ROUTES[0])
    return app
