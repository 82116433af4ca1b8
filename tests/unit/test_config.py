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
