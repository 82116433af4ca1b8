from __future__ import annotations

import pytest

from gateway.config import ConfigError, describe, load_settings


def write(tmp_path, text: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


def test_defaults():
    s = load_settings(env={})
    assert (s.host, s.port, s.parallel) == ("127.0.0.1", 11435, 4)


def test_precedence_defaults_then_file_then_env_then_flags(tmp_path):
    config = write(tmp_path, "port: 9000\nparallel: 2\nhost: 0.0.0.0\n")
    s = load_settings(config, env={"GATEWAY_PORT": "9100", "GATEWAY_PARALLEL": "3"}, overrides={"parallel": 6})
    assert (s.host, s.port, s.parallel) == ("0.0.0.0", 9100, 6)


def test_config_file_from_the_environment(tmp_path):
    s = load_settings(env={"GATEWAY_CONFIG": write(tmp_path, "aliases: {gpt-4o-mini: smollm2-135m-instruct}\n")})
    assert s.aliases == {"gpt-4o-mini": "smollm2-135m-instruct"}


def test_list_settings_from_the_environment_accept_json_or_a_single_value():
    assert load_settings(env={"GATEWAY_MODELS_DIRS": '["/a", "/b"]'}).models_dirs == ["/a", "/b"]
    assert load_settings(env={"GATEWAY_MODELS_DIRS": "/a"}).models_dirs == ["/a"]


@pytest.mark.parametrize("text, needle", [
    ("nonsense: 1\n", "unknown setting `nonsense`"),
    ("port: eighty\n", "`port` must be int"),
    ("parallel: 0\n", "`parallel` must be positive"),
    ("parallel: 1000\n", "`parallel` must be at most 256"),
    ("aliases: [1]\n", "`aliases` must be dict"),
    ("- a\n", "top level must be a mapping"),
    ("log_level: loud\n", "`log_level`"),
    ("responses_store: ' '\n", "`responses_store`"),
])
def test_errors_name_the_setting(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_settings(write(tmp_path, text), env={})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="GATEWAY_PORT"):
        load_settings(env={"GATEWAY_PORT": "x"})


def test_describe_lists_every_setting_with_its_variable():
    text = describe(load_settings(env={}))
    assert "port = 11435" in text and "GATEWAY_PORT" in text


def test_the_shipped_config_file_lists_every_setting_at_its_default():
    from pathlib import Path

    import yaml

    from gateway.config import SETTINGS

    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "gateway.yaml").read_text())
    assert shipped == {s.key: s.default for s in SETTINGS}


def test_a_keep_alive_that_is_not_finite_is_a_config_error(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("keep_alive: .inf\n")
    with pytest.raises(ConfigError, match="keep_alive"):
        load_settings(str(path), env={})


def test_a_tilde_in_any_path_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "gw.yaml").write_text("models_dirs: [~/models]\nollama_models: ~/store\n"
                                      "models: [{name: m, path: ~/m.gguf}]\nresponses_store: ~/r.db\n")
    settings = load_settings("~/gw.yaml", env={})
    assert settings.models_dirs == [str(tmp_path / "models")]
    assert settings.ollama_models == str(tmp_path / "store")
    assert settings.models[0]["path"] == str(tmp_path / "m.gguf")
    assert settings.responses_store == str(tmp_path / "r.db")
    assert load_settings(env={"GATEWAY_OLLAMA_MODELS": "auto"}).ollama_models == "auto"


def test_the_seed_services_keys_are_accepted_under_their_new_names_with_a_note(tmp_path):
    store = tmp_path / "ollama" / "manifests"
    config = write(tmp_path, f"models_dir: {tmp_path}/models\nmanifests_dir: {store}\ndefault_context_size: 4096\n"
                             "gpu_layers: 10\nthreads: 2\nbatch_size: 256\npreserve_think_tags: false\n"
                             "default_model: smollm2-135m-instruct\ntensor_split: '3,1'\nrequest_timeout: 120\n"
                             "log_level: INFO\n")
    s = load_settings(config, env={})
    assert s.models_dirs == [f"{tmp_path}/models"] and s.ollama_models == str(tmp_path / "ollama")
    assert (s.n_ctx, s.n_gpu_layers, s.n_threads, s.n_batch, s.keep_think_tags) == (4096, 10, 2, 256, False)
    assert (s.default_model, s.tensor_split, s.request_timeout, s.log_level) == (
        "smollm2-135m-instruct", [3.0, 1.0], 120.0, "info")
    assert len(s.notes) == 7 and all("seed service" in note for note in s.notes)
    assert any("`threads`" in note and "`n_threads`" in note for note in s.notes)


def test_a_seed_key_beside_its_new_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="`threads` and `n_threads` both given"):
        load_settings(write(tmp_path, "threads: 2\nn_threads: 4\n"), env={})


@pytest.mark.parametrize(("text", "error"), [
    ("tensor_split: [1, -1]\n", "tensor_split"),
    ("tensor_split: '0,0'\n", "tensor_split"),
    ("tensor_split: 'a,b'\n", "tensor_split"),
    (f"tensor_split: {[1] * 17}\n", "tensor_split"),
    ("flash_attn: sometimes\n", "flash_attn"),
    ("cache_type_k: q3_k\n", "cache_type_k"),
    ("flash_attn: 'off'\ncache_type_v: q8_0\n", "cache_type_v.*flash"),
    ("request_timeout: -1\n", "request_timeout"),
])
def test_gpu_and_engine_settings_are_validated(tmp_path, text, error):
    with pytest.raises(ConfigError, match=error):
        load_settings(write(tmp_path, text), env={})


def test_the_tensor_split_flag_takes_the_seeds_text_form():
    assert load_settings(env={}, overrides={"tensor_split": "1, 1,2"}).tensor_split == [1.0, 1.0, 2.0]


def test_check_masks_api_keys():
    text = describe(load_settings(env={}, overrides={"api_keys": ["sk-local-0123456789abcdef", "short",
                                                                   {"key": "sk-named-0123456789wxyz", "name": "ci"}]}))
    line = next(line for line in text.splitlines() if line.startswith("api_keys ="))
    assert "0123456789" not in line and "short" not in line
    assert "***cdef" in line and "***wxyz" in line and '"name": "ci"' in line


def test_the_shipped_config_file_groups_every_setting_under_its_heading():
    from pathlib import Path

    from gateway.config import GROUPS, SETTINGS

    grouped = [key for _title, keys in GROUPS for key in keys]
    assert sorted(grouped) == sorted(s.key for s in SETTINGS)  # each setting in exactly one group
    found: list[tuple[str, str]] = []
    heading = None
    for line in (Path(__file__).resolve().parents[2] / "config" / "gateway.yaml").read_text().splitlines():
        if line.startswith("# == ") and line.endswith(" =="):
            heading = line[5:-3]
        elif line and line[0].isalpha():
            found.append((heading, line.split(":", 1)[0]))
    assert found == [(title, key) for title, keys in GROUPS for key in keys]
