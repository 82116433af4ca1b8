"""Changes to the Ollama model store made through the API: copy, delete, create, pull.

The store module knows the files; this one knows what else a change touches: names are resolved through the
registry (so `ollama cp` works for models served from folders too), a deleted model is unloaded first, and the
registry is reloaded afterwards so the next request sees the change. Only store models can be deleted: a GGUF
folder or a config entry is the operator's, not the API's.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

from gateway.backends.pool import ModelPool
from gateway.models.ollama_store import OllamaStore
from gateway.models.registry import ModelRegistry, ModelSpec
from gateway.models.registry_client import RegistryClient
from gateway.polling import TICK, ClientGone, poll
from gateway.types import ErrorKind, GatewayError, ModelChange, Progress, invalid

log = logging.getLogger("gateway.models")

Report = Callable[[Progress], None]
_END = object()
STORE_WAIT_POLL = 0.5  # seconds between checks that a change waiting for the store still has its client


class ChangeRun:
    """A model change running on its own thread: iterate for its Progress, or `last()` for the final one.
    `close()` (the client left) asks it to stop between chunks."""

    def __init__(self, changes: ModelChanges, change: ModelChange, client_gone: ClientGone):
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._client_gone = client_gone
        threading.Thread(target=self._work, args=(changes, change), name=f"model-{change.op}", daemon=True).start()

    def _work(self, changes: ModelChanges, change: ModelChange) -> None:
        try:
            changes.run(change, self._events.put, self._stop.is_set)
            self._events.put(_END)
        except GatewayError as err:
            self._events.put(err)
        except Exception as exc:
            log.exception("model change failed")
            self._events.put(GatewayError(ErrorKind.INTERNAL, f"The model change failed: {exc}"))

    def __iter__(self) -> Iterator[Progress]:
        for item in poll(lambda timeout: self._events.get(timeout=timeout), self._client_gone, None):
            if item is TICK:
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
        self.close()  # the client hung up

    def last(self) -> Progress:
        final = Progress("success")
        for progress in self:
            final = progress
        return final

    def close(self) -> None:
        self._stop.set()


class ModelChanges:
    def __init__(self, registry: ModelRegistry, pool: ModelPool, store_root: str | None,
                 default_registry: str | None = None, enabled: bool = True, private_networks: bool = False,
                 registry_hosts: list[str] | None = None):
        self.enabled = enabled  # `store_changes: false` turns every change through the API off
        self.private_networks = private_networks  # pulls may reach private addresses (registry_client.py)
        self.registry_hosts = registry_hosts or []  # hosts a name may pull from; empty: any
        self._store_lock = threading.Lock()
        self.registry = registry
        self.pool = pool
        self.store = OllamaStore(Path(store_root)) if store_root else None
        self.default_registry = default_registry
        if self.store is not None:  # at start, no download is running: what a stopped server left is garbage
            for name in self.store.remove_partials():
                log.info("removed the unfinished download %s", name)

    def run(self, change: ModelChange, report: Report, should_stop: Callable[[], bool]) -> None:
        store = self.store
        if store is None:
            raise invalid("The Ollama model store is off (`ollama_models: off`), so models cannot be changed.",
                          "model")
        self._take_store(report, should_stop)
        try:
            if change.op == "copy":
                self._copy(store, change)
            elif change.op == "delete":
                self._delete(store, change)
            elif change.op == "create":
                self._create(store, change, report)
            else:
                client = RegistryClient(store, self.default_registry, private_networks=self.private_networks,
                                        allowed_hosts=self.registry_hosts)
                client.pull(change.name, change.insecure, report, should_stop)
        finally:
            self._store_lock.release()
            self.registry.reload()
            for name in self.pool.retire_changed(self.registry.spec):  # replaced under the same name
                log.info("%s changed in the store: it is reloaded once its current requests finish", name)
        if change.op in ("copy", "delete"):
            report(Progress("success"))

    def _take_store(self, report: Report, should_stop: Callable[[], bool]) -> None:
        """One change at a time: a delete must not remove a blob that a concurrent pull or create has just found
        and reused. A change that waits says so, and gives up if its client leaves."""
        told = False
        while not self._store_lock.acquire(timeout=STORE_WAIT_POLL):
            if should_stop():
                raise GatewayError(ErrorKind.INTERNAL, "The change was cancelled while it waited for another one.")
            if not told:
                report(Progress("waiting for another change to the model store"))
                told = True

    def _copy(self, store: OllamaStore, change: ModelChange) -> None:
        if store.locate(change.source) is not None:
            store.copy(change.source, change.name)
            return
        spec = self.registry.resolve(change.source)
        store.create(change.name, gguf_file(spec, "source"), spec.template, spec.system, spec.parameters)

    def _delete(self, store: OllamaStore, change: ModelChange) -> None:
        if store.locate(change.name) is None:
            try:
                spec = self.registry.resolve(change.name)
            except GatewayError:
                raise GatewayError(ErrorKind.NOT_FOUND, f"model '{change.name}' not found", "model") from None
            raise invalid(f"The model `{spec.name}` is served from {spec.source} ({spec.path}), not from the Ollama "
                          "store; remove it there.", "model")
        spec = self.registry.resolve(change.name)
        self.pool.unload(spec.name)
        store.delete(change.name)

    def _create(self, store: OllamaStore, change: ModelChange, report: Report) -> None:
        """`from` is a GGUF file on the server's disk (an absolute path) or a model this server serves."""
        source = change.source
        template, system, parameters = change.template, change.system, dict(change.parameters)
        if os.path.isabs(source):
            if not os.path.isfile(source):
                raise invalid(f"`from`: {source} is not a file on the server.", "from")
            path = source
        else:
            spec = self.registry.resolve(source)
            path = gguf_file(spec, "from")
            template = template or spec.template
            system = system if system is not None else spec.system
            parameters = {**spec.parameters, **parameters}
        store.create(change.name, path, template, system, parameters, report)


def gguf_file(spec: ModelSpec, param: str) -> str:
    """The model's GGUF file, which a copy or create starts from; a model served elsewhere has none."""
    if not spec.path:
        raise invalid(f"The model `{spec.name}` is served by {spec.backend} servers: it has no GGUF file here to "
                      "copy or build on.", param)
    return spec.path
