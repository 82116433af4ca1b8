"""The model pool's policy (leases, keep_alive, LRU, limits, budget) with stand-in backends: the policy is
plain bookkeeping, and real loads are covered by the integration tests."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gateway.backends.base import BackendStatus
from gateway.backends.pool import ModelPool, PoolSettings
from gateway.engine.executor import ExecutorSettings
from gateway.models.registry import ModelSpec
from gateway.types import ErrorKind, GatewayError


class FakeBackend:
    def __init__(self, name: str):
        self.name = name
        self.n_ctx = 2048
        self.closed = threading.Event()

    def describe(self) -> BackendStatus:
        return BackendStatus("fake", self.n_ctx, parallel=1)

    def close(self) -> None:
        self.closed.set()


class Loads:
    def __init__(self):
        self.executors: list[FakeBackend] = []

    def __call__(self, spec: ModelSpec, settings: ExecutorSettings) -> FakeBackend:
        executor = FakeBackend(spec.name)
        executor.settings = settings
        self.executors.append(executor)
        return executor

    def names(self) -> list[str]:
        return [e.name for e in self.executors]


def spec(name: str, **kwargs) -> ModelSpec:
    return ModelSpec(name=name, path=f"/models/{name}.gguf", **kwargs)


def make_pool(sizes: dict[str, int] | None = None, **settings) -> tuple[ModelPool, Loads]:
    loads = Loads()
    pool = ModelPool(ExecutorSettings(), PoolSettings(**settings), load_fn=loads,
                     estimate_fn=lambda s, _: (sizes or {}).get(s.name, 100))
    return pool, loads


def test_one_load_per_model_and_leases_share_it():
    pool, loads = make_pool()
    first, second = pool.acquire(spec("a")), pool.acquire(spec("a"))
    assert first.backend is second.backend and loads.names() == ["a"]
    assert first.load_seconds >= 0 and second.load_seconds == 0.0


def test_keep_alive_zero_unloads_when_the_last_request_ends():
    pool, loads = make_pool()
    first, second = pool.acquire(spec("a")), pool.acquire(spec("a"))
    first.release(0)
    assert "a" in pool.loaded()  # still serving the second request
    second.release()
    assert "a" not in pool.loaded() and loads.executors[0].closed.is_set()


def test_idle_models_expire_after_their_keep_alive():
    pool, loads = make_pool(keep_alive=0.2)
    pool.acquire(spec("a")).release()
    assert "a" in pool.loaded()
    assert loads.executors[0].closed.wait(3)
    assert "a" not in pool.loaded()


def test_a_release_with_a_shorter_keep_alive_wakes_the_reaper_for_the_earlier_expiry():
    # the reaper sleeps until the expiry it knows (an hour away) and is woken only for an earlier one
    pool, loads = make_pool(keep_alive=3600)
    pool.acquire(spec("a")).release()
    time.sleep(0.1)  # the reaper now waits for the hour
    pool.acquire(spec("a")).release(0.2)
    assert loads.executors[0].closed.wait(3)
    assert "a" not in pool.loaded()


def test_negative_keep_alive_keeps_a_model_forever():
    pool, _ = make_pool(keep_alive=0.1)
    pool.acquire(spec("a")).release(-1)
    time.sleep(0.4)
    assert "a" in pool.loaded()
    assert pool.running()[0].expires_at_epoch() is None


def test_least_recently_used_idle_model_leaves_at_the_model_limit():
    pool, loads = make_pool(max_loaded_models=2)
    pool.acquire(spec("a")).release()
    pool.acquire(spec("b")).release()
    pool.acquire(spec("a")).release()  # b is now the least recently used
    pool.acquire(spec("c")).release()
    assert sorted(pool.loaded()) == ["a", "c"]
    assert loads.executors[1].closed.is_set()


def test_memory_budget_evicts_until_the_new_model_fits():
    pool, _ = make_pool({"a": 400, "b": 400, "c": 500}, max_loaded_models=0, memory_budget=1000)
    pool.acquire(spec("a")).release()
    pool.acquire(spec("b")).release()
    pool.acquire(spec("c")).release()
    assert sorted(pool.loaded()) == ["b", "c"]


def test_a_model_larger_than_the_budget_is_refused_before_loading():
    pool, loads = make_pool({"big": 5000}, memory_budget=1000)
    with pytest.raises(GatewayError) as info:
        pool.acquire(spec("big"))
    assert info.value.kind == ErrorKind.UNAVAILABLE and "budget" in info.value.message
    assert loads.executors == []


def test_busy_models_are_never_unloaded_and_a_load_waits_for_room():
    pool, _ = make_pool(max_loaded_models=1)
    busy = pool.acquire(spec("a"))
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(spec("b"))))
    waiter.start()
    time.sleep(0.3)
    assert not got and list(pool.loaded()) == ["a"]
    busy.release()
    waiter.join(5)
    assert got and list(pool.loaded()) == ["b"]


def test_a_load_that_cannot_get_room_times_out_as_unavailable():
    pool, _ = make_pool(max_loaded_models=1, load_timeout=0.3)
    pool.acquire(spec("a"))
    with pytest.raises(GatewayError) as info:
        pool.acquire(spec("b"))
    assert info.value.kind == ErrorKind.UNAVAILABLE


def test_pinned_models_never_expire_or_leave():
    pool, _ = make_pool(keep_alive=0.1, max_loaded_models=1, load_timeout=0.3, pinned={"a"})
    pool.acquire(spec("a")).release(0)
    time.sleep(0.3)
    assert "a" in pool.loaded()
    with pytest.raises(GatewayError):
        pool.acquire(spec("b"))


def test_unload_waits_for_running_requests():
    pool, loads = make_pool()
    lease = pool.acquire(spec("a"))
    assert pool.unload("a") is True
    assert "a" in pool.loaded()
    lease.release()
    assert "a" not in pool.loaded() and loads.executors[0].closed.is_set()
    assert pool.unload("a") is False


def test_load_options_apply_only_to_the_load():
    pool, loads = make_pool()
    pool.acquire(spec("a"), {"n_threads": 1, "n_gpu_layers": 0}).release()
    assert loads.executors[0].settings.n_threads == 1


@pytest.mark.parametrize("failure", [RuntimeError("bad file"), ValueError("bad metadata"), KeyError("arch")])
def test_a_load_that_fails_in_any_way_is_unavailable_and_the_next_request_tries_again(failure):
    loads = Loads()
    attempts = []

    def flaky(spec_, settings):
        attempts.append(spec_.name)
        if len(attempts) == 1:
            raise failure
        return loads(spec_, settings)

    pool = ModelPool(ExecutorSettings(), PoolSettings(load_timeout=2), load_fn=flaky, estimate_fn=lambda s, _: 100)
    with pytest.raises(GatewayError) as info:
        pool.acquire(spec("a"))
    assert info.value.kind == ErrorKind.UNAVAILABLE
    pool.acquire(spec("a")).release()  # a stale loading state would make this wait load_timeout, then raise
    assert attempts == ["a", "a"]
    pool.close()


def test_a_clients_thread_count_never_exceeds_the_machine():
    pool, loads = make_pool()
    pool.acquire(spec("a"), {"n_threads": 10_000}).release()
    assert loads.executors[0].settings.n_threads <= (os.cpu_count() or 1)


def test_a_clients_gpu_layers_apply_only_where_the_machine_can_offload(monkeypatch):
    monkeypatch.setattr("gateway.backends.pool.supports_gpu_offload", lambda: False)
    pool, loads = make_pool()
    pool.acquire(spec("a"), {"n_gpu_layers": 99}).release()
    assert loads.executors[0].settings.load.n_gpu_layers == 0
    monkeypatch.setattr("gateway.backends.pool.supports_gpu_offload", lambda: True)
    pool.acquire(spec("b"), {"n_gpu_layers": -7}).release()
    assert loads.executors[1].settings.load.n_gpu_layers == -1


def test_a_changed_model_leaves_the_pool_and_is_unloaded_once_its_requests_finish():
    pool, loads = make_pool()
    lease = pool.acquire(spec("a"))
    idle = pool.acquire(spec("b"))
    idle.release()
    changed = {"a": spec("a", n_ctx=1024), "b": spec("b")}  # a's settings changed, b's did not
    assert pool.retire_changed(changed.get) == ["a"]
    old = loads.executors[0]
    assert not old.closed.is_set()  # its request is still running
    fresh = pool.acquire(changed["a"])  # the next request gets a new load of the new spec
    assert fresh.backend is not old and loads.names() == ["a", "b", "a"]
    lease.release()
    assert old.closed.is_set() and not fresh.backend.closed.is_set()
    assert {m["name"] for m in pool.view()} == {"a", "b"}
    fresh.release()


def test_a_model_gone_from_the_registry_is_unloaded_when_idle():
    pool, loads = make_pool()
    pool.acquire(spec("a")).release()
    assert pool.retire_changed(lambda name: None) == ["a"]
    assert loads.executors[0].closed.is_set() and pool.view() == []


def test_a_retiring_model_still_counts_against_the_memory_budget():
    pool, _ = make_pool({"a": 60, "b": 60}, memory_budget=100, load_timeout=0.2)
    lease = pool.acquire(spec("a"))
    pool.retire_changed(lambda name: None)
    with pytest.raises(GatewayError) as err:
        pool.acquire(spec("b"))  # a still holds its memory until its request ends
    assert err.value.kind == ErrorKind.UNAVAILABLE
    lease.release()
    pool.acquire(spec("b")).release()


def test_a_models_own_engine_settings_override_the_servers_and_the_context_is_chosen_for_them():
    from gateway.backends.context_size import ContextChoice
    from gateway.engine.llama import ContextParams, LoadParams

    seen = []

    def choose(spec_, settings, budget):
        seen.append((settings.n_batch, budget))
        return ContextChoice(3072, "because")

    base = ExecutorSettings(n_batch=512, load=LoadParams(n_gpu_layers=0, tensor_split=[1.0, 1.0]),
                            context=ContextParams("auto", "f16", "q8_0"))
    loads = Loads()
    pool = ModelPool(base, PoolSettings(memory_budget=10**9), load_fn=loads, estimate_fn=lambda s, _: 1,
                     context_fn=choose)
    own = spec("a", n_batch=128, flash_attn="on", cache_type_k="q4_0", lora=[("/x.gguf", 0.5)])
    pool.acquire(own).release()
    pool.acquire(spec("b")).release()
    a, b = (e.settings for e in loads.executors)
    assert a.context == ContextParams("on", "q4_0", "q8_0", (("/x.gguf", 0.5),))
    assert (a.n_batch, a.load.tensor_split) == (128, [1.0, 1.0])
    assert (b.n_batch, b.context) == (512, ContextParams("auto", "f16", "q8_0"))
    assert (a.n_ctx, a.n_ctx_reason) == (3072, "because") and seen[0] == (128, 10**9)
    assert pool.context_for(spec("a")) == (2048, "because")  # loaded: what its backend has
    assert pool.context_for(spec("c")) == (3072, "because")  # not loaded: what it would get


def test_models_served_upstream_take_no_place_in_the_model_limit():
    pool, loads = make_pool(max_loaded_models=1)
    remote = ModelSpec(name="remote", backend="upstream")
    pool.acquire(spec("a")).release()
    pool.acquire(remote).release()  # does not push the local model out
    assert not loads.executors[0].closed.is_set()
    pool.acquire(spec("b")).release()  # a second local model does
    assert loads.executors[0].closed.is_set() and not loads.executors[1].closed.is_set()
