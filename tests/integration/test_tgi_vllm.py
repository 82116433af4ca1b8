"""TGI through `huggingface_hub`'s InferenceClient and raw wire checks, and vLLM's routes and extra fields, on
the real server; including the paths the two families share (/generate, /tokenize) and TGI's `POST /`."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
import requests
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError

from tests.integration.support import DEFAULT_CONFIG, MODEL, N_CTX, GatewayServer

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with GatewayServer(tmp_path_factory.mktemp("gateway-tgi"), DEFAULT_CONFIG) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


@pytest.fixture(scope="module")
def hf(server: GatewayServer) -> InferenceClient:
    return InferenceClient(model=server.url, timeout=120)


def post(server: GatewayServer, path: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=60, **kwargs)


# -- TGI --------------------------------------------------------------------------------------------------------


def test_text_generation_plain_and_streamed_agree(hf: InferenceClient) -> None:
    text = hf.text_generation(PROMPT, max_new_tokens=12, do_sample=False)
    streamed = "".join(hf.text_generation(PROMPT, max_new_tokens=12, do_sample=False, stream=True))
    assert text and streamed == text


def test_text_generation_details(hf: InferenceClient) -> None:
    out = hf.text_generation(PROMPT, max_new_tokens=5, do_sample=False, details=True, top_n_tokens=2)
    assert out.details.finish_reason == "length" and out.details.generated_tokens == 5
    assert len(out.details.tokens) == 5
    token = out.details.tokens[0]
    assert isinstance(token.id, int) and token.logprob <= 0 and token.special is False
    assert "".join(t.text for t in out.details.tokens) == out.generated_text


def test_stream_details_on_the_last_event(hf: InferenceClient) -> None:
    events = list(hf.text_generation(PROMPT, max_new_tokens=4, do_sample=False, stream=True, details=True))
    assert all(e.generated_text is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text == "".join(e.token.text for e in events)
    assert last.details.finish_reason == "length" and last.details.generated_tokens == 4


def test_stop_sequence_and_full_text(hf: InferenceClient) -> None:
    text = hf.text_generation(PROMPT, max_new_tokens=12, do_sample=False)
    stop = text.strip()[:3]
    out = hf.text_generation(PROMPT, max_new_tokens=12, do_sample=False, stop=[stop], details=True)
    assert out.details.finish_reason == "stop_sequence"
    full = hf.text_generation(PROMPT, max_new_tokens=3, do_sample=False, return_full_text=True)
    assert full.startswith(PROMPT)


def test_validation_errors_are_422(hf: InferenceClient, server: GatewayServer) -> None:
    with pytest.raises(ValidationError):
        hf.text_generation(PROMPT, max_new_tokens=4, temperature=-1.0)
    r = post(server, "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": "many"}})
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


def test_raw_generate_stream_framing(server: GatewayServer) -> None:
    r = post(server, "/generate_stream", {"inputs": PROMPT, "parameters": {"max_new_tokens": 3}}, stream=True)
    lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    events = [json.loads(line[5:]) for line in lines if line.startswith("data:") and "[DONE]" not in line]
    assert len(events) == 3 and events[-1]["details"] is None
    assert {"index", "token", "generated_text"} <= set(events[0])


def test_info_and_tokenize(server: GatewayServer) -> None:
    info = requests.get(server.url + "/info", timeout=10).json()
    assert info["model_id"] == MODEL and info["max_total_tokens"] == N_CTX
    tokens = post(server, "/tokenize", {"inputs": "Hello world"}).json()
    assert [t["text"] for t in tokens] and "".join(t["text"] for t in tokens).endswith("Hello world")


def test_chat_completion_through_huggingface_hub(hf: InferenceClient) -> None:
    out = hf.chat_completion([{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0)
    assert out.choices[0].message.content
    chunks = list(hf.chat_completion([{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0,
                                     stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[0].message.content


# -- vLLM -------------------------------------------------------------------------------------------------------


def test_vllm_legacy_generate(server: GatewayServer) -> None:
    out = post(server, "/generate", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}).json()
    assert out["text"][0].startswith(PROMPT) and len(out["text"][0]) > len(PROMPT)
    r = post(server, "/generate", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True},
             stream=True)
    texts = [json.loads(chunk)["text"][0] for chunk in r.iter_lines() if chunk.strip(b"\0")]
    assert texts[-1] == out["text"][0] and all(t.startswith(PROMPT) for t in texts)


def test_vllm_tokenize_detokenize_version(server: GatewayServer) -> None:
    tok = post(server, "/tokenize", {"model": MODEL, "prompt": "Hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == N_CTX
    chat = post(server, "/tokenize", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["count"] > tok["count"] - 2
    text = post(server, "/detokenize", {"model": MODEL, "tokens": tok["tokens"]}).json()
    assert text["prompt"].endswith("Hello world")
    assert "version" in requests.get(server.url + "/version", timeout=10).json()


def test_vllm_extra_sampling_fields(server: GatewayServer) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "min_tokens": 6,
            "ignore_eos": True, "top_k": 1, "repetition_penalty": 1.0}
    out = post(server, "/v1/completions", body).json()
    assert out["usage"]["completion_tokens"] == 6
    plain = post(server, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 12,
                                             "temperature": 0}).json()["choices"][0]["text"]
    stop = plain.strip()[:3]
    kept = post(server, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                                            "stop": [stop], "include_stop_str_in_output": True}).json()
    assert kept["choices"][0]["text"].endswith(stop)
    bad = post(server, "/v1/completions", {"model": MODEL, "prompt": PROMPT, "min_tokens": "x"})
    assert bad.status_code == 400


def test_models_carry_max_model_len(server: GatewayServer) -> None:
    data = requests.get(server.url + "/v1/models", timeout=10).json()["data"]
    assert next(m for m in data if m["id"] == MODEL)["max_model_len"] == N_CTX
