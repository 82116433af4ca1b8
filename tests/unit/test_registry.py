"""Model discovery and name resolution over temporary folders of links to the embedded GGUF."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.models.embedded import EMBEDDED_MODEL_NAME, embedded_model_path
from gateway.models.registry import ModelRegistry, ModelSpec
from gateway.types import ErrorKind, GatewayError
from tests.unit.ollama_fixtures import gguf_bytes, put_model


@pytest.fixture(scope="module")
def smollm2() -> str:
    path = embedded_model_path()
    assert path is not None
    return path


@pytest.fixture
def models_dir(tmp_path: Path, smollm2: str) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "alpha.gguf").symlink_to(smollm2)
    (folder / "beta.gguf").symlink_to(smollm2)
    (folder / "notes.txt").write_text("not a model")
    (folder / "broken.gguf").write_bytes(b"not a gguf at all")
    (folder / "nested").mkdir()
    (folder / "nested" / "hidden.gguf").symlink_to(smollm2)
    return folder


@pytest.fixture
def registry(models_dir: Path, smollm2: str) -> ModelRegistry:
    entries = [{"name": "main", "path": smollm2, "aliases": ["gpt-4o"], "parallel": 2, "tensor_split": [1, 2]}]
    aliases = {"claude-*": EMBEDDED_MODEL_NAME, "gpt-4o-mini": "alpha", "gpt-*": "beta"}
    return ModelRegistry.discover([str(models_dir)], entries, aliases)


def names(registry: ModelRegistry) -> list[str]:
    return [s.name for s in registry.specs()]


def test_discovers_configured_folder_and_embedded(registry: ModelRegistry) -> None:
    assert names(registry) == ["main", "alpha", "beta", EMBEDDED_MODEL_NAME]
    main = registry.resolve("main")
    assert (main.parallel, main.tensor_split, main.embedded) == (2, [1.0, 2.0], False)
    assert registry.resolve(EMBEDDED_MODEL_NAME).embedded


def test_default_is_first_configured_entry(registry: ModelRegistry) -> None:
    assert registry.default().name == "main"


def test_default_without_entries_is_embedded(models_dir: Path) -> None:
    registry = ModelRegistry.discover([str(models_dir)], [], {})
    assert registry.default().name == EMBEDDED_MODEL_NAME
    assert registry.default().embedded


def test_embedded_can_be_left_out(models_dir: Path) -> None:
    registry = ModelRegistry.discover([str(models_dir)], [], {}, include_embedded=False)
    assert names(registry) == ["alpha", "beta"]
    with pytest.raises(GatewayError) as info:
        registry.default()
    assert info.value.kind is ErrorKind.NOT_FOUND


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("main", "main"),
        ("gpt-4o", "main"),  # entry alias
        ("gpt-4o-mini", "alpha"),  # exact alias beats the glob below
        ("gpt-3.5-turbo", "beta"),  # glob
        ("claude-3-5-sonnet-latest", EMBEDDED_MODEL_NAME),
        ("alpha:latest", "alpha"),
        ("gpt-4o:latest", "main"),
        ("Main", "main"),  # Ollama compares names case-insensitively
        ("MAIN:latest", "main"),
    ],
)
def test_resolve(registry: ModelRegistry, requested: str, expected: str) -> None:
    assert registry.resolve(requested).name == expected


@pytest.mark.parametrize(
    "requested",
    ["nope", "", "alpha.gguf", "alpha:7b", "hidden", "notes", "broken", "nested/hidden"],
)
def test_unknown_names_are_not_found(registry: ModelRegistry, requested: str) -> None:
    with pytest.raises(GatewayError) as info:
        registry.resolve(requested)
    err = info.value
    assert err.kind is ErrorKind.NOT_FOUND
    assert (err.param, err.code) == ("model", "model_not_found")
    assert err.message == f"The model `{requested}` does not exist."


def test_names_are_never_paths(registry: ModelRegistry, models_dir: Path, smollm2: str) -> None:
    traversal = ["../models/alpha", "../alpha", "..\\alpha", str(models_dir / "alpha.gguf"), smollm2, "/etc/passwd"]
    for requested in traversal:
        with pytest.raises(GatewayError) as info:
            registry.resolve(requested)
        assert info.value.kind is ErrorKind.NOT_FOUND, requested


def test_first_folder_and_configured_entries_win_names(tmp_path: Path, models_dir: Path, smollm2: str) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "alpha.gguf").symlink_to(smollm2)
    (other / "gamma.gguf").symlink_to(smollm2)
    entries = [{"name": "beta", "path": smollm2, "n_ctx": 1024}]
    registry = ModelRegistry.discover([str(models_dir), str(other), str(tmp_path / "missing")], entries, {})
    assert names(registry) == ["beta", "alpha", "gamma", EMBEDDED_MODEL_NAME]
    assert registry.resolve("alpha").path == str(models_dir / "alpha.gguf")
    assert registry.resolve("beta").n_ctx == 1024


def test_info_from_gguf_header(registry: ModelRegistry, smollm2: str) -> None:
    info = registry.info(registry.resolve("alpha"), loaded=True)
    assert info.name == "alpha"
    assert info.size == os.stat(smollm2).st_size
    assert info.created == int(os.stat(smollm2).st_mtime)
    assert (info.architecture, info.context_length, info.quantization) == ("llama", 8192, "Q4_1")
    assert info.parameter_count == 134_515_008
    assert info.aliases == ["gpt-4o-mini"]
    assert info.loaded
    assert registry.info(registry.resolve("main")).aliases == ["gpt-4o"]
    assert registry.info(registry.resolve(EMBEDDED_MODEL_NAME)).aliases == []


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"x": "unknown-model"}, "unknown model 'unknown-model'"),
        ({"claude-*": "nope"}, "unknown model 'nope'"),
        ({"alpha": "beta"}, "same name as a model"),
        ({"gpt-4o": "alpha"}, "points at both 'main' and 'alpha'"),
    ],
)
def test_bad_aliases(models_dir: Path, smollm2: str, aliases: dict[str, str], message: str) -> None:
    entries = [{"name": "main", "path": smollm2, "aliases": ["gpt-4o"]}]
    with pytest.raises(ValueError, match=message):
        ModelRegistry.discover([str(models_dir)], entries, aliases)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "models\\[0\\]: unknown key 'colour'"),
        ({"parallel": "2"}, "models\\[0\\].parallel: wrong type str"),
        ({"n_ctx": 2.5}, "models\\[0\\].n_ctx: wrong type float"),
        ({"n_gpu_layers": True}, "models\\[0\\].n_gpu_layers: wrong type bool"),
        ({"n_gpu_layers": "all"}, "models\\[0\\].n_gpu_layers: wrong type str"),
        ({"aliases": "gpt-4o"}, "models\\[0\\].aliases: wrong type str"),
        ({"aliases": ["ok", 3]}, "models\\[0\\].aliases: wrong type list"),
        ({"tensor_split": [0.5, "x"]}, "models\\[0\\].tensor_split"),
        ({"split_mode": "diagonal"}, "models\\[0\\].split_mode"),
        ({"tensor_split": [1, -1]}, "models\\[0\\].tensor_split: expected at most 16 shares, none negative"),
        ({"tensor_split": [0, 0]}, "models\\[0\\].tensor_split: .*positive sum"),
        ({"tensor_split": [1] * 17}, "models\\[0\\].tensor_split: expected at most 16"),
        ({"parallel": 0}, "models\\[0\\].parallel: must be at least 1"),
        ({"name": ""}, "models\\[0\\].name"),
        ({"path": "/nonexistent/model.gguf"}, "models\\[0\\].path: '/nonexistent/model.gguf' is not a file"),
        ({"parameters": {"temperature": "hot"}}, "models\\[0\\].parameters.temperature: expected a number"),
        ({"parameters": {"stop": [1]}}, "models\\[0\\].parameters.stop: expected a string or a list"),
        ({"parameters": {"num_ctx": 2.5}}, "models\\[0\\].parameters.num_ctx: expected an integer"),
        ({"parameters": {"top_p": float("nan")}}, "models\\[0\\].parameters.top_p: expected a finite"),
        ({"n_batch": 0}, "models\\[0\\].n_batch: must be at least 1"),
        ({"flash_attn": "yes"}, "models\\[0\\].flash_attn: 'yes' is not one of auto, on, off"),
        ({"cache_type_k": "q2_k"}, "models\\[0\\].cache_type_k: 'q2_k' is not one of"),
        ({"flash_attn": "off", "cache_type_v": "q4_0"}, "models\\[0\\].cache_type_v: a quantized V cache"),
        ({"lora": "x.gguf"}, "models\\[0\\].lora: wrong type str"),
        ({"lora": ["/nonexistent/adapter.gguf"]}, "models\\[0\\].lora\\[0\\]: '/nonexistent/adapter.gguf' is not"),
        ({"lora": [{"path": "a.gguf", "scale": "big"}]}, "models\\[0\\].lora\\[0\\]: expected a file path"),
        ({"lora": [{"file": "a.gguf"}]}, "models\\[0\\].lora\\[0\\]: expected a file path"),
    ],
)
def test_bad_entries(smollm2: str, change: dict[str, Any], message: str) -> None:
    entry = {"name": "main", "path": smollm2, **change}
    with pytest.raises(ValueError, match=message):
        ModelRegistry.discover([], [entry], {})


def test_entry_must_be_a_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"nope")
    with pytest.raises(ValueError, match="models\\[0\\].path: .*not a GGUF file"):
        ModelRegistry.discover([], [{"name": "x", "path": str(fake)}], {})


@pytest.mark.parametrize("entry", [{"path": "x"}, {"name": "x"}, "just-a-string"])
def test_malformed_entries(entry: Any) -> None:
    with pytest.raises(ValueError, match="models\\[0\\]"):
        ModelRegistry.discover([], [entry], {})


def test_duplicate_configured_names(smollm2: str) -> None:
    entry = {"name": "main", "path": smollm2}
    with pytest.raises(ValueError, match="configured twice"):
        ModelRegistry.discover([], [entry, dict(entry)], {})


def test_spec_defaults() -> None:
    spec = ModelSpec(name="m", path="/m.gguf")
    assert (spec.n_gpu_layers, spec.split_mode, spec.main_gpu, spec.tensor_split, spec.embedded) == (
        None,
        "layer",
        0,
        None,
        False,
    )


def test_a_pulled_params_layer_of_the_wrong_types_is_dropped_not_kept(tmp_path: Path) -> None:
    params = json.dumps({"temperature": "hot", "stop": ["<end>"], "seed": True, "mirostat": "ignored"}).encode()
    put_model(tmp_path / "store", "registry.ollama.ai/library/odd/latest",
              [("model", gguf_bytes()), ("params", params)])
    registry = ModelRegistry.discover([], [], {}, include_embedded=False, ollama_root=str(tmp_path / "store"))
    assert registry.resolve("odd").parameters == {"stop": ["<end>"], "mirostat": "ignored"}


def test_a_store_model_named_like_a_configured_alias_is_hidden_not_a_crash(tmp_path: Path, smollm2: str) -> None:
    put_model(tmp_path / "store", "registry.ollama.ai/library/gpt-4o-mini/latest", [("model", gguf_bytes())])
    registry = ModelRegistry.discover([], [], {"gpt-4o-mini:latest": EMBEDDED_MODEL_NAME},
                                      ollama_root=str(tmp_path / "store"))
    registry.reload()
    assert registry.resolve("gpt-4o-mini:latest").name == EMBEDDED_MODEL_NAME


def test_engine_settings_and_lora_adapters_of_an_entry(smollm2: str, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF")
    entry = {"name": "main", "path": smollm2, "n_batch": 256, "flash_attn": "on", "cache_type_k": "q8_0",
             "cache_type_v": "q8_0", "lora": [str(adapter), {"path": str(adapter), "scale": 0.25}]}
    spec = ModelRegistry.discover([], [entry], {}).resolve("main")
    assert (spec.n_batch, spec.flash_attn, spec.cache_type_k, spec.cache_type_v) == (256, "on", "q8_0", "q8_0")
    assert spec.lora == [(str(adapter), 1.0), (str(adapter), 0.25)]


def test_the_default_model_is_configurable_and_must_exist(models_dir: Path, smollm2: str) -> None:
    registry = ModelRegistry.discover([str(models_dir)], [], {"fast": "beta"}, default_model="fast")
    assert registry.default().name == "beta"
    with pytest.raises(ValueError, match="default_model: 'nope' is not a model"):
        ModelRegistry.discover([str(models_dir)], [], {}, default_model="nope")


def test_reconfigure_replaces_the_sources_and_a_bad_config_changes_nothing(models_dir: Path, smollm2: str) -> None:
    registry = ModelRegistry.discover([], [{"name": "main", "path": smollm2}], {})
    registry.reconfigure([str(models_dir)], [{"name": "other", "path": smollm2}], {"o": "other"}, "alpha")
    assert registry.spec("main") is None and registry.resolve("o").name == "other"
    assert registry.default().name == "alpha"
    with pytest.raises(ValueError, match="models\\[0\\]"):
        registry.reconfigure([], [{"name": "broken"}], {}, "")
    assert registry.resolve("o").name == "other" and registry.default().name == "alpha"
