"""SIGHUP: the model list, aliases, the default model, API keys and per-model settings are read again from the
config without dropping a request in flight.

gunicorn's master owns SIGHUP (it would restart the worker, and with it every runner and stream), so `serve`
runs an arbiter that passes the signal on to the worker instead, where this module's handler reloads on a
thread. A config with an error changes nothing and says why in the log. A model whose settings or weights
changed is reloaded once its current requests finish (`ModelPool.retire_changed`). Settings read only at start
(host, port, threads, engine defaults...) are named in the log as needing a restart.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

from gateway.config import SETTINGS, ConfigError, Settings, key_policies

log = logging.getLogger("gateway.reload")

RELOADED = frozenset({"models", "models_dirs", "aliases", "default_model", "api_keys", "api_keys_file"})


def install(worker: Any, load: Callable[[], Settings]) -> None:
    """gunicorn's `post_worker_init` hook: SIGHUP in the worker reloads with `load` (the same file, environment
    and flags the server started with)."""
    gateway = worker.wsgi.extensions["gateway"]

    def on_hup(_signum: int, _frame: Any) -> None:
        threading.Thread(target=reload, args=(gateway, load), name="config-reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)


_lock = threading.Lock()  # two SIGHUPs in a row reload one after the other


def reload(gateway: Any, load: Callable[[], Settings]) -> bool:
    """Apply the config `load` reads now; False (and nothing changed) if it has an error."""
    with _lock:
        try:
            new = load()
            policies = key_policies(new)
            gateway.registry.reconfigure(new.models_dirs, new.models, new.aliases, new.default_model)
        except (ConfigError, ValueError, OSError) as exc:
            log.error("config reload failed, nothing changed: %s", exc)
            return False
        gateway.access.set_keys(policies)
        old = gateway.settings
        for key in RELOADED:
            old.values[key] = new.values[key]
        retired = gateway.pool.retire_changed(gateway.registry.spec)
        restart = [s.key for s in SETTINGS if s.key not in RELOADED and old.values[s.key] != new.values[s.key]]
        log.info("config reloaded: %d models%s", len(gateway.registry.specs()),
                 f"; reloaded once idle: {', '.join(retired)}" if retired else "")
        if restart:
            log.warning("changed settings that take effect only after a restart: %s", ", ".join(restart))
        return True
