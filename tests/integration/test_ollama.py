"""The Ollama API through the official `ollama` client against the real server and model, plus raw wire checks
where the client hides the framing (NDJSON, durations, the `/` banner)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import ollama
import pytest
import requests

from gateway.models.embedded import embedded_model_path
from gateway.models.ollama_store import OllamaStore
from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer
from tests.registry_fixture import NOT_INSTALLED, DockerRegistry, docker_registry_binary, push_ollama_model
from tests.system_tools import require_tool
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}
QUESTION = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    # the test registries listen on loopback: pulls may reach them only with the opt-in
    config = {**DEFAULT_CONFIG, "registry_private_networks": True}
    with GatewayServer(tmp_path_factory.mktemp("gateway-ollama"), config) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


@pytest.fixture(scope="module")
def client(server: GatewayServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def running(client: ollama.Client) -> list[str]:
    return [m.model for m in client.ps().models]


def test_banner_and_version(server: GatewayServer) -> None:
    root = requests.get(server.url + "/", timeout=10)
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert requests.head(server.url + "/", timeout=10).status_code == 200
    version = requests.get(server.url + "/api/version", timeout=10).json()["version"]
    assert version.count(".") == 2


def test_list_and_show_describe_the_model_from_its_gguf(client: ollama.Client) -> None:
    names = [m.model for m in client.list().models]
    assert f"{MODEL}:latest" in names
    entry = next(m for m in client.list().models if m.model == f"{MODEL}:latest")
    assert entry.size > 50_000_000 and entry.digest
    assert entry.details.parameter_size == "135M" and entry.details.quantization_level == "Q4_1"
    assert entry.details.family == "llama" and entry.details.format == "gguf"
    shown = client.show(MODEL)
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert "tokenizer.ggml.tokens" not in shown.modelinfo
    assert "im_start" in shown.template
    assert "completion" in shown.capabilities and "tools" in shown.capabilities
    assert "thinking" not in shown.capabilities  # the CLI would send think: true on every call
    assert shown.details.quantization_level == "Q4_1"


def test_think_for_a_model_that_cannot_reason_is_refused_as_ollama_does(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(MODEL, messages=[{"role": "user", "content": "Hi"}], think=True)
    assert info.value.status_code == 400 and "does not support thinking" in info.value.error
    answer = client.chat(MODEL, messages=[{"role": "user", "content": "Hi"}], think=False,
                         options={"num_predict": 4})
    assert answer.message.content and not answer.message.thinking


def test_chat_streamed_and_not_give_the_same_text(client: ollama.Client) -> None:
    whole = client.chat(MODEL, messages=QUESTION, options=GREEDY)
    chunks = list(client.chat(MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert whole.message.content and whole.message.role == "assistant"
    assert "".join(c.message.content for c in chunks) == whole.message.content
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    final = chunks[-1]
    assert final.done_reason in ("stop", "length")
    assert final.eval_count == whole.eval_count > 0
    assert final.prompt_eval_count == whole.prompt_eval_count > 0
    assert final.total_duration > final.eval_duration > 0


def test_generate_templated_and_raw(client: ollama.Client) -> None:
    templated = client.generate(MODEL, prompt="Say hello.", options=GREEDY)
    streamed = "".join(c.response for c in client.generate(MODEL, prompt="Say hello.", options=GREEDY, stream=True))
    assert templated.response and streamed == templated.response
    raw = client.generate(MODEL, prompt="The capital of France is", raw=True, options={**GREEDY, "num_predict": 4})
    assert raw.done_reason == "length" and raw.eval_count == 4
    assert raw.prompt_eval_count < templated.prompt_eval_count  # no chat template around a raw prompt


def test_options_are_honoured(client: ollama.Client) -> None:
    out = client.generate(MODEL, prompt="Count: 1, 2, 3,", raw=True,
                          options={"temperature": 0, "num_predict": 40, "stop": [","], "unknown_option": 1})
    assert "," not in out.response and out.done_reason == "stop"


def test_system_prompt_of_generate(client: ollama.Client) -> None:
    with_system = client.generate(MODEL, prompt="Who are you?", system="You are a pirate.", options=GREEDY)
    without = client.generate(MODEL, prompt="Who are you?", options=GREEDY)
    assert with_system.prompt_eval_count != without.prompt_eval_count


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    out = client.embed(MODEL, input=["red", "a longer sentence about colors"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 576
    assert out.prompt_eval_count and out.total_duration
    legacy = client.embeddings(MODEL, prompt="red")
    assert legacy.embedding == pytest.approx(out.embeddings[0], abs=1e-5)


def test_keep_alive_zero_unloads_and_the_next_request_reloads(client: ollama.Client) -> None:
    client.chat(MODEL, messages=QUESTION, options=GREEDY)
    assert f"{MODEL}:latest" in running(client)
    entry = client.ps().models[0]
    assert entry.size > 0 and entry.context_length > 0 and entry.expires_at is not None
    unloaded = client.generate(MODEL, keep_alive=0)
    assert unloaded.done_reason == "unload"
    wait_for(lambda: running(client) == [], "the model to be unloaded")
    again = client.chat(MODEL, messages=QUESTION, options=GREEDY)
    assert again.load_duration > 0 and f"{MODEL}:latest" in running(client)


def test_load_with_an_empty_request(client: ollama.Client) -> None:
    client.generate(MODEL, keep_alive=0)
    loaded = client.chat(MODEL, messages=[])
    assert loaded.done_reason == "load" and loaded.done
    assert f"{MODEL}:latest" in running(client)


def test_keep_alive_forever_shows_far_future_expiry(client: ollama.Client) -> None:
    client.generate(MODEL, prompt="hi", options={"num_predict": 1}, keep_alive=-1)
    entry = next(m for m in client.ps().models if m.model == f"{MODEL}:latest")
    assert entry.expires_at.year > 2100
    client.generate(MODEL, prompt="hi", options={"num_predict": 1}, keep_alive="5m")
    entry = next(m for m in client.ps().models if m.model == f"{MODEL}:latest")
    assert entry.expires_at.year < 2100


def test_unknown_model_is_404_in_ollamas_shape(client: ollama.Client, server: GatewayServer) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("no-such-model", messages=QUESTION)
    assert info.value.status_code == 404 and "not found" in info.value.error
    raw = requests.post(server.url + "/api/show", json={"model": "../../etc/passwd"}, timeout=10)
    assert raw.status_code == 404 and set(raw.json()) == {"error"}


def test_bad_fields_are_400_naming_the_field(server: GatewayServer) -> None:
    cases: list[dict[str, Any]] = [
        {"model": MODEL, "messages": "hi"},
        {"model": MODEL, "messages": QUESTION, "options": {"temperature": "hot"}},
        {"model": MODEL, "messages": QUESTION, "keep_alive": "soon"},
    ]
    for body in cases:
        r = requests.post(server.url + "/api/chat", json=body, timeout=10)
        assert r.status_code == 400, body
        assert set(r.json()) == {"error"}


def test_stream_is_ndjson_with_nanosecond_durations(server: GatewayServer) -> None:
    r = requests.post(server.url + "/api/chat", json={"model": MODEL, "messages": QUESTION, "options": GREEDY},
                      stream=True, timeout=60)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.iter_lines() if line]
    final = lines[-1]
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration"):
        assert isinstance(final[key], int), key
    assert final["total_duration"] > 1_000_000  # nanoseconds, not seconds
    assert final["created_at"].endswith("Z")


def test_images_for_a_text_model_are_a_clear_400(client: ollama.Client) -> None:
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(MODEL, messages=[{"role": "user", "content": "What is this?", "images": [pixel]}])
    assert info.value.status_code == 400 and "image" in info.value.error


def test_long_chat_drops_oldest_turns_to_fit_num_ctx(client: ollama.Client) -> None:
    filler = "word " * 150
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"{i} {filler}"}, {"role": "assistant", "content": "ok"}]
    messages = [{"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": "Hi"}]
    out = client.chat(MODEL, messages=messages, options={"num_ctx": 512, "num_predict": 8, "temperature": 0})
    assert out.prompt_eval_count < 512 and out.done


def test_copy_then_delete(client: ollama.Client) -> None:
    client.copy(MODEL, "my-copy:v1")
    assert "my-copy:v1" in [m.model for m in client.list().models]
    reply = client.generate("my-copy:v1", prompt="hi", options={"num_predict": 2})
    assert reply.done
    client.delete("my-copy:v1")
    assert "my-copy:v1" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("my-copy:v1")
    assert info.value.status_code == 404


def test_create_from_a_gguf_on_disk_with_defaults(client: ollama.Client) -> None:
    progress = list(client.create("pirate", from_=embedded_model_path(), system="You are a pirate.",
                                  parameters={"temperature": 0, "num_predict": 5}, stream=True))
    assert progress[-1].status == "success"
    shown = client.show("pirate")
    assert "You are a pirate." in shown.modelfile
    assert "num_predict" in (shown.parameters or "")
    out = client.generate("pirate", prompt="Hello")
    assert out.eval_count <= 5
    client.delete("pirate")


def test_the_server_survives(server: GatewayServer) -> None:
    assert server.alive()


def test_pull_from_a_real_registry_with_progress(client: ollama.Client, tmp_path_factory) -> None:
    """Debian's docker-registry (an OCI distribution server, what Ollama's registry speaks) holds a model pushed
    the way Ollama lays one out; `ollama pull` through us downloads, verifies and serves it."""
    binary = docker_registry_binary()
    require_tool(binary, NOT_INSTALLED)
    with DockerRegistry(tmp_path_factory.mktemp("registry"), binary) as registry:
        push_ollama_model(registry.url, "library/tiny:v1", Path(embedded_model_path()), system="You are tiny.",
                          parameters={"num_predict": 3})
        name = f"{registry.host}/library/tiny:v1"
        progress = list(client.pull(name, insecure=True, stream=True))
        with pytest.raises(ollama.ResponseError) as info:
            client.pull(f"{registry.host}/library/missing:v1", insecure=True)
        assert info.value.status_code == 404 and "does not exist" in info.value.error
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    layer = next(p for p in progress if p.total and p.total > 50_000_000)
    assert layer.digest.startswith("sha256:") and max(p.completed or 0 for p in progress) == layer.total
    assert name in [m.model for m in client.list().models]
    out = client.generate(name, prompt="Hi")
    assert out.eval_count <= 3  # the params layer became the model's defaults
    assert "You are tiny." in client.show(name).modelfile
    client.delete(name)


def test_embed_truncates_long_input_unless_told_not_to(client: ollama.Client) -> None:
    long_text = "colors " * 3000
    out = client.embed(MODEL, input=long_text)
    assert len(out.embeddings) == 1 and out.prompt_eval_count <= 2048
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(MODEL, input=long_text, truncate=False)
    assert info.value.status_code == 400


def test_models_already_in_an_ollama_store_are_served(tmp_path_factory) -> None:
    """A store laid out by Ollama (manifests + blobs) is discovered at start; its system and params layers
    become the model's defaults."""
    store_dir = tmp_path_factory.mktemp("store")
    OllamaStore(store_dir).create("library-model:q4", embedded_model_path(), system="You are from the store.",
                                  parameters={"num_predict": 2})
    with GatewayServer(tmp_path_factory.mktemp("gateway-store"), DEFAULT_CONFIG,
                       env={"OLLAMA_MODELS": str(store_dir)}) as gw:
        client = ollama.Client(host=gw.url, timeout=60)
        assert "library-model:q4" in [m.model for m in client.list().models]
        out = client.generate("library-model:q4", prompt="Hello")
        assert out.eval_count <= 2
        assert "You are from the store." in client.show("library-model:q4").modelfile


def test_pull_resumes_a_partial_blob_and_refuses_wrong_bytes(client: ollama.Client, server: GatewayServer,
                                                             tmp_path_factory) -> None:
    """A partial download left in the store is resumed with a Range request; a partial holding wrong bytes
    fails the digest check and leaves nothing behind: no blob, no partial, no manifest."""
    binary = docker_registry_binary()
    require_tool(binary, NOT_INSTALLED)
    gguf = Path(embedded_model_path())
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    blobs = server.work_dir / "ollama-models" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    partial, blob = blobs / f"sha256-{digest}-partial", blobs / f"sha256-{digest}"
    with DockerRegistry(tmp_path_factory.mktemp("registry-resume"), binary) as registry:
        push_ollama_model(registry.url, "library/resume:v1", gguf)
        name = f"{registry.host}/library/resume:v1"
        half = len(data) // 2
        partial.write_bytes(data[:half])
        progress = [p for p in client.pull(name, insecure=True, stream=True) if p.digest == f"sha256:{digest}"]
        assert progress and min(p.completed or 0 for p in progress) >= half  # resumed, not restarted
        assert blob.exists() and not partial.exists()
        client.delete(name)
        assert not blob.exists()
        partial.write_bytes(bytes(half))  # wrong bytes where the first half should be
        with pytest.raises(ollama.ResponseError) as info:
            list(client.pull(name, insecure=True, stream=True))
        assert "digest" in str(info.value.error)
    assert not blob.exists() and not partial.exists()
    assert name not in [m.model for m in client.list().models]
