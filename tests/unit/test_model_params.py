"""GPU settings reach llama.cpp's model parameters, checked on the objects built (this machine has no GPU)."""

from __future__ import annotations

import pytest

from gateway.engine.llama import LoadParams, model_params


def test_layers_split_mode_main_gpu_and_tensor_split_reach_the_model_params():
    mp, split = model_params(LoadParams(n_gpu_layers=-1, split_mode="row", main_gpu=1, tensor_split=[3.0, 1.0]))
    assert (mp.n_gpu_layers, mp.split_mode, mp.main_gpu) == (-1, 2, 1)
    assert [mp.tensor_split[i] for i in range(4)] == [3.0, 1.0, 0.0, 0.0]
    assert split is not None  # kept by the caller for as long as llama.cpp reads it


@pytest.mark.parametrize(("params", "layers", "repack"), [(LoadParams(), 0, True),
                                                          (LoadParams(n_gpu_layers=20, repack=False), 20, False)])
def test_defaults_and_repacking(params, layers, repack):
    mp, split = model_params(params)
    assert (mp.n_gpu_layers, bool(mp.use_extra_bufts), split) == (layers, repack, None)


def test_flash_attention_and_kv_cache_types_reach_the_context_params():
    import llama_cpp

    from gateway.engine.llama import ContextParams, context_params

    cp = context_params(4096, 256, 4, 2, extra=ContextParams("on", "q8_0", "q4_0"))
    assert (cp.n_ctx, cp.n_batch, cp.n_seq_max, cp.n_threads) == (4096, 256, 4, 2)
    assert (cp.flash_attn_type, cp.type_k, cp.type_v) == (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                                          llama_cpp.GGML_TYPE_Q8_0, llama_cpp.GGML_TYPE_Q4_0)
    default = context_params(2048, 512, 1, 1)
    assert (default.flash_attn_type, default.type_k) == (llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
                                                         llama_cpp.GGML_TYPE_F16)


def test_the_engine_knows_every_option_name_the_config_accepts():
    from gateway import engine_options
    from gateway.engine import llama

    assert set(llama.CACHE_TYPES) == set(engine_options.CACHE_TYPES)
    assert set(llama.FLASH_ATTN) == set(engine_options.FLASH_ATTN_MODES)
    assert set(engine_options.SPLIT_MODES) <= set(llama.SPLIT_MODES)


def test_llama_cpp_lists_its_devices_the_cpu_included():
    from gateway.engine.llama import devices

    found = devices()
    assert any(d.type == "cpu" and d.memory_total > 0 for d in found)


def test_a_tensor_split_is_checked_against_the_gpus_llama_cpp_sees(caplog):
    from gateway.engine.llama import check_tensor_split, devices, supports_gpu_offload

    gpus = [d for d in devices() if d.type in ("gpu", "igpu")]
    if supports_gpu_offload():  # a GPU build: one share more than there are GPUs is refused
        with pytest.raises(ValueError, match=f"models: big: tensor_split has {len(gpus) + 1} shares"):
            check_tensor_split([1.0] * (len(gpus) + 1), "models: big")
    else:  # a CPU-only build (CI's): ignored, with a warning
        check_tensor_split([3.0, 1.0], "models: big")
        assert "models: big: tensor_split [3.0, 1.0] is ignored" in caplog.text
