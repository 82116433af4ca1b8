"""A model's context is its trained length when that KV cache fits its memory, else the longest that fits; read
from the embedded model's real GGUF header (SmolLM2-135M: 8192 trained, 30 layers, 3 KV heads of 64)."""

from __future__ import annotations

import os

import pytest

from gateway.backends.context_size import MIN_CTX, choose_context, fixed_bytes, kv_bytes
from gateway.engine.executor import ExecutorSettings
from gateway.engine.llama import ContextParams, LoadParams
from gateway.models.embedded import embedded_model_path
from gateway.models.gguf import read_metadata
from gateway.models.registry import ModelSpec

PATH = str(embedded_model_path())
SPEC = ModelSpec(name="smol", path=PATH)
META = read_metadata(PATH)


def settings(**kwargs) -> ExecutorSettings:
    return ExecutorSettings(load=LoadParams(n_gpu_layers=0), **kwargs)


def test_the_trained_length_when_its_kv_cache_fits():
    choice = choose_context(SPEC, settings(), 2**34)
    assert choice.n_ctx == META.context_length == 8192
    assert "trained length" in choice.reason and "memory budget" in choice.reason


def test_the_longest_context_that_fits_a_small_budget():
    s = settings()
    budget = fixed_bytes(SPEC, META, s) + kv_bytes(META, 3000, s)
    choice = choose_context(SPEC, s, budget)
    assert choice.n_ctx == 2816  # 3000 rounded down to a multiple of 256
    assert kv_bytes(META, choice.n_ctx, s) <= budget - fixed_bytes(SPEC, META, s)
    assert "longest" in choice.reason and "8192" in choice.reason


def test_a_quantized_kv_cache_holds_more_in_the_same_memory():
    f16, q8 = settings(), settings(context=ContextParams(cache_type_k="q8_0", cache_type_v="q8_0"))
    budget = fixed_bytes(SPEC, META, f16) + kv_bytes(META, 3000, f16)
    assert choose_context(SPEC, q8, budget).n_ctx > choose_context(SPEC, f16, budget).n_ctx


def test_no_room_at_all_still_loads_a_minimal_context_and_says_so():
    choice = choose_context(SPEC, settings(), os.path.getsize(PATH))
    assert choice.n_ctx == MIN_CTX and "no room" in choice.reason


@pytest.mark.parametrize("budget", [0, 2**34])
def test_a_configured_context_wins(budget):
    choice = choose_context(SPEC, settings(n_ctx=1024), budget)
    assert (choice.n_ctx, choice.reason) == (1024, "configured (trained length 8192)")


def test_a_model_without_a_local_file_is_left_to_its_engine():
    assert choose_context(ModelSpec(name="remote", path=""), settings(), 0) is None
