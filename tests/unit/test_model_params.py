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
