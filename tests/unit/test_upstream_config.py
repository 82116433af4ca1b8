"""`backend: upstream` entries in `models:`: what the registry makes of them, and errors that name the key."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.models.registry import ModelRegistry
from gateway.models.upstream_config import UpstreamConfig, parse_upstream


def upstream(**keys: Any) -> dict[str, Any]:
    return {"name": "big", "backend": "upstream", "upstream": ["http://gpu-1:8000/v1/", "http://gpu-2:8000"], **keys}


def registry(*entries: dict[str, Any]) -> ModelRegistry:
    return ModelRegistry.discover([], list(entries), {}, include_embedded=False)


def test_an_upstream_entry_becomes_a_spec_without_a_file():
    spec = registry(upstream(aliases=["gpt-4o"], n_ctx=32768, keep_alive="1h",
                             parameters={"temperature": 0.3})).resolve("gpt-4o")
    assert (spec.name, spec.backend, spec.path, spec.n_ctx, spec.keep_alive) == ("big", "upstream", "", 32768,
                                                                                   3600.0)
    assert spec.upstream == UpstreamConfig(urls=("http://gpu-1:8000", "http://gpu-2:8000"))


def test_listing_an_upstream_model_reads_no_file():
    reg = registry(upstream(n_ctx=4096))
    info = reg.info(reg.resolve("big"), loaded=True, full=True)
    assert (info.path, info.size, info.max_model_len, info.loaded) == ("", 0, 4096, True)
    assert info.metadata == {"upstream.model": "big", "upstream.urls": ["http://gpu-1:8000", "http://gpu-2:8000"]}
    assert info.digest.startswith("sha256:") and "completion" in info.capabilities


def test_the_mapping_form_with_a_key_from_the_environment():
    config = parse_upstream({"url": "https://vllm.internal", "model": "meta-llama/Llama-3.1-70B-Instruct",
                             "api_key_env": "VLLM_KEY", "read_timeout": 900, "first_byte_timeout": 60,
                             "health_interval": 0, "cooldown": 5, "connect_timeout": 2},
                            "models[0].upstream", env={"VLLM_KEY": "secret"})
    assert config == UpstreamConfig(urls=("https://vllm.internal",), model="meta-llama/Llama-3.1-70B-Instruct",
                                    api_key="secret", connect_timeout=2.0, read_timeout=900.0,
                                    first_byte_timeout=60.0, health_interval=0.0, cooldown=5.0)


@pytest.mark.parametrize(("entry", "message"), [
    (upstream(backend="remote"), "models[0].backend: 'remote' is not one of local, upstream"),
    ({"name": "big", "backend": "upstream"}, "models[0]: missing required key 'upstream' (for `backend: upstream`)"),
    (upstream(path="/models/x.gguf"), "models[0].path: not used by a model with `backend: upstream`"),
    (upstream(n_gpu_layers=10), "models[0].n_gpu_layers: not used by a model with `backend: upstream`"),
    ({"name": "x", "path": "/m.gguf", "upstream": ["http://a"]},
     "models[0].upstream: only a model with `backend: upstream`"),
    (upstream(upstream=[]), "models[0].upstream.urls: expected a non-empty list of URLs"),
    (upstream(upstream=["gpu-1:8000"]), "models[0].upstream.urls[0]: expected an http:// or https:// URL"),
    (upstream(upstream=["http://a:80", "http://a:80/v1"]), "models[0].upstream.urls: a URL is listed twice"),
    (upstream(upstream=["http://a:99999"]), "models[0].upstream.urls[0]: the port of"),
    (upstream(upstream=["http://user:pw@a"]), "models[0].upstream.urls[0]: a server URL carries no query"),
    (upstream(upstream={"urls": ["http://a"], "timeout": 3}), "models[0].upstream: unknown key 'timeout'"),
    (upstream(upstream={"urls": ["http://a"], "url": "http://b"}), "exactly one of them"),
    (upstream(upstream={"url": "http://a", "read_timeout": 0}), "models[0].upstream.read_timeout: expected a number"),
    (upstream(upstream={"url": "http://a", "cooldown": True}), "models[0].upstream.cooldown: expected a number"),
    (upstream(upstream={"url": "http://a", "api_key": "k", "api_key_env": "K"}), "not both"),
    (upstream(upstream={"url": "http://a", "api_key_env": "LLM_GATEWAY_TEST_UNSET_KEY"}),
     "models[0].upstream.api_key_env: the environment variable LLM_GATEWAY_TEST_UNSET_KEY is not set"),
    (upstream(upstream={"url": "http://a", "model": ""}), "models[0].upstream.model: expected a non-empty string"),
    (upstream(upstream=42), "models[0].upstream: wrong type int"),
    (upstream(n_ctx=0), "models[0].n_ctx: must be at least 1"),
])
def test_mistakes_name_the_key(entry, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        registry(entry)
