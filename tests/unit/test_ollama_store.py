"""The Ollama store: name rules, reading hand-written manifests, and copy, delete and create on a temp folder."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from gateway.models import ollama_store
from gateway.models.ollama_store import ModelName, OllamaStore, default_store_root, digest_hex, parse_name
from gateway.types import ErrorKind, GatewayError
from tests.unit.ollama_fixtures import (
    gguf_bytes,
    manifest_for,
    put_blob,
    put_manifest,
    put_model,
    tiny_gguf,
)

SMOL = "registry.ollama.ai/library/smollm2/latest"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def store(root: Path) -> OllamaStore:
    return OllamaStore(root)


def statuses(events) -> list[str]:
    return [e.status for e in events]


# -- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, parts, display", [
    ("smollm2", ("registry.ollama.ai", "library", "smollm2", "latest"), "smollm2:latest"),
    ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m"), "smollm2:135m"),
    ("qwen2.5:0.5b-instruct-q4_K_M", ("registry.ollama.ai", "library", "qwen2.5", "0.5b-instruct-q4_K_M"),
     "qwen2.5:0.5b-instruct-q4_K_M"),
    ("user/model:tag", ("registry.ollama.ai", "user", "model", "tag"), "user/model:tag"),
    ("registry.ollama.ai/library/smollm2:latest", ("registry.ollama.ai", "library", "smollm2", "latest"),
     "smollm2:latest"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
     ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
     "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
    ("127.0.0.1:5000/library/tiny", ("127.0.0.1:5000", "library", "tiny", "latest"),
     "127.0.0.1:5000/library/tiny:latest"),
    ("REGISTRY.Ollama.AI/Library/SmolLM2:Latest", ("REGISTRY.Ollama.AI", "Library", "SmolLM2", "Latest"),
     "SmolLM2:Latest"),
    ("_under/_score:_1", ("registry.ollama.ai", "_under", "_score", "_1"), "_under/_score:_1"),
])
def test_parse_name_fills_ollamas_defaults(text, parts, display):
    name = parse_name(text)
    assert name is not None
    assert name.parts == parts
    assert name.display == display
    assert str(name) == f"{parts[0]}/{parts[1]}/{parts[2]}:{parts[3]}"


def test_parse_name_keeps_the_scheme_and_whether_a_host_was_written():
    name = parse_name("http://127.0.0.1:5000/library/tiny:v1")
    assert name is not None
    assert (name.scheme, name.host_given, name.parts) == ("http", True, ("127.0.0.1:5000", "library", "tiny", "v1"))
    plain = parse_name("tiny")
    assert plain is not None and (plain.scheme, plain.host_given) == ("", False)
    assert name == ModelName("127.0.0.1:5000", "library", "tiny", "v1")  # scheme and host_given do not compare


@pytest.mark.parametrize("text", [
    "", ":", "model:", "/model", "ns/", "host//model", "//", "../x", "..", "a/../b", "../../etc/passwd",
    "/etc/passwd", "a/b/c/d", "x/y\\z", "C:\\models\\x", "..\\..\\x", "model:../../x", "model:..", "m..x",
    "ns/m:v..1", "mo del", "model\n", "mødel", "-model", ".hidden", "model:.tag", "model:-tag", "ns.x/model",
    "ftp://host/ns/model", "file:///etc/passwd", "model@sha256:abc", "a" * 81, "ns/" + "m" * 81, "m:" + "t" * 81,
    "h" * 351 + "/ns/m", "~/model", "model/", "nul\x00l",
])
def test_parse_name_refuses_what_ollama_refuses_and_anything_that_could_leave_the_store(text):
    assert parse_name(text) is None


def test_parse_name_accepts_the_longest_parts_ollama_accepts():
    name = parse_name("h" * 350 + "/" + "n" * 80 + "/" + "m" * 80 + ":" + "t" * 80)
    assert name is not None and len(name.host) == 350


def test_parse_name_refuses_non_strings():
    assert parse_name(None) is None  # type: ignore[arg-type]


def test_names_compare_case_insensitively_through_key():
    a, b = parse_name("SmolLM2:Latest"), parse_name("registry.ollama.ai/library/smollm2")
    assert a is not None and b is not None
    assert a != b
    assert a.key == b.key == "registry.ollama.ai/library/smollm2:latest"


@pytest.mark.parametrize("digest", ["sha256:" + "a" * 64, "sha256-" + "A" * 64])
def test_digest_hex_accepts_both_spellings(digest):
    assert digest_hex(digest) == "a" * 64


@pytest.mark.parametrize("digest", ["sha256:" + "a" * 63, "sha512:" + "a" * 64, "sha256:../../etc/passwd",
                                    "sha256:" + "a" * 64 + "/x", "", None])
def test_digest_hex_refuses_anything_else(digest):
    with pytest.raises(ValueError, match="invalid digest format"):
        digest_hex(digest)


def test_default_root_is_ollama_models_or_the_home_folder(monkeypatch, tmp_path):
    assert default_store_root({"OLLAMA_MODELS": "/srv/models"}) == Path("/srv/models")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_root({}) == tmp_path / ".ollama" / "models"
    assert default_store_root({"OLLAMA_MODELS": ""}) == tmp_path / ".ollama" / "models"


# -- reading --------------------------------------------------------------------------------------------------


def test_models_reads_every_layer_of_a_complete_manifest(root, store):
    params = {"stop": ["<|im_end|>"], "temperature": 0.7}
    messages = [{"role": "user", "content": "hi"}]
    path = put_model(root, SMOL, [
        ("template", b"{{ .Prompt }}"), ("system", b"Be brief."), ("params", json.dumps(params).encode()),
        ("license", b"MIT"), ("license", b"Apache"), ("messages", json.dumps(messages).encode()),
        ("projector", b"mmproj"), ("adapter", b"lora"),
    ])
    [model] = store.models()
    manifest = json.loads(path.read_bytes())
    gguf_digest = manifest["layers"][0]["digest"]
    assert model.name == "smollm2:latest"
    assert model.full_name == "registry.ollama.ai/library/smollm2:latest"
    assert model.manifest_path == path
    assert model.manifest_digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.digest == gguf_digest
    assert model.model_path == root / "blobs" / gguf_digest.replace(":", "-")
    assert model.model_path.read_bytes() == gguf_bytes()
    assert model.size == sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]
    assert model.modified == path.stat().st_mtime
    assert (model.template, model.system, model.parameters) == ("{{ .Prompt }}", "Be brief.", params)
    assert (model.license, model.messages) == (["MIT", "Apache"], messages)
    assert model.projector is not None and model.projector.read_bytes() == b"mmproj"
    assert [p.read_bytes() for p in model.adapter_paths] == [b"lora"]
    assert model.config["model_family"] == "llama"


def test_a_minimal_manifest_has_no_template_system_or_parameters(root, store):
    put_model(root, SMOL)
    [model] = store.models()
    assert (model.template, model.system, model.parameters, model.projector) == (None, None, {}, None)


def test_the_legacy_prompt_layer_is_the_template(root, store):
    put_model(root, SMOL, [("prompt", b"{{ .Prompt }}")])
    assert store.models()[0].template == "{{ .Prompt }}"


def test_the_last_model_layer_wins_as_in_ollama(root, store):
    put_manifest(root, SMOL, manifest_for(root, [("model", gguf_bytes()), ("model", gguf_bytes(padding=10))]))
    assert store.models()[0].model_path.read_bytes() == gguf_bytes(padding=10)


def test_models_lists_newest_first_with_ollamas_short_names(root, store):
    paths = [put_model(root, "registry.ollama.ai/library/old/latest"),
             put_model(root, "hf.co/user/repo/Q4_K_M"),
             put_model(root, "registry.ollama.ai/user/mine/v1")]
    for age, path in enumerate(reversed(paths)):
        os.utime(path, (1_700_000_000 - age * 100, 1_700_000_000 - age * 100))
    assert [m.name for m in store.models()] == ["user/mine:v1", "hf.co/user/repo:Q4_K_M", "old:latest"]


def test_a_missing_config_blob_costs_only_the_details(root, store):
    path = put_model(root, SMOL)
    config = json.loads(path.read_bytes())["config"]["digest"]
    (root / "blobs" / config.replace(":", "-")).unlink()
    assert store.models()[0].config == {}


@pytest.mark.parametrize("broken, reason", [
    (b"{not json", "not JSON"),
    (b"[]", "no 'layers' list"),
    (json.dumps({"layers": [{"mediaType": "x", "digest": "sha256:../../../etc/passwd", "size": 1}]}).encode(),
     "invalid digest format"),
    (json.dumps({"layers": [{"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": -1}]}).encode(),
     "non-negative integer 'size'"),
    (json.dumps({"layers": ["x"]}).encode(), "layers[0] is not an object"),
    (json.dumps({"layers": []}).encode(), "no GGUF model layer"),
    (json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "b" * 64,
                             "size": 3}]}).encode(), "model blob sha256:bbbb"),
])
def test_broken_manifests_are_skipped_with_a_warning(root, store, caplog, broken, reason):
    put_model(root, SMOL)
    put_manifest(root, "registry.ollama.ai/library/broken/latest", broken)
    with caplog.at_level(logging.WARNING, logger="gateway.models.ollama_store"):
        assert [m.name for m in store.models()] == ["smollm2:latest"]
    assert "broken:latest" in caplog.text and reason in caplog.text


@pytest.mark.parametrize("kind, data, reason", [
    ("params", b"[1, 2]", "not a JSON dict"),
    ("params", b"{oops", "not JSON"),
    ("messages", b"{}", "not a JSON list"),
])
def test_bad_small_layers_make_the_manifest_broken(root, store, caplog, kind, data, reason):
    put_model(root, SMOL, [(kind, data)])
    with caplog.at_level(logging.WARNING, logger="gateway.models.ollama_store"):
        assert store.models() == []
    assert reason in caplog.text


def test_a_missing_projector_blob_makes_the_manifest_broken(root, store, caplog):
    path = put_model(root, SMOL, [("projector", b"mmproj")])
    projector = json.loads(path.read_bytes())["layers"][1]["digest"]
    (root / "blobs" / projector.replace(":", "-")).unlink()
    with caplog.at_level(logging.WARNING, logger="gateway.models.ollama_store"):
        assert store.models() == []
    assert f"the projector blob {projector} is missing" in caplog.text


def test_files_with_invalid_names_and_folders_are_not_models(root, store, caplog):
    put_model(root, SMOL)
    put_model(root, "registry.ollama.ai/library/bad name/latest")
    put_manifest(root, "registry.ollama.ai/library/smollm2/.latest.1234.tmp", b"partial")
    (root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "folder").mkdir()
    with caplog.at_level(logging.WARNING, logger="gateway.models.ollama_store"):
        assert [str(n) for n in store.names()] == ["registry.ollama.ai/library/smollm2:latest"]
    assert "bad name" in caplog.text and ".tmp" not in caplog.text


def test_an_empty_or_missing_root_has_no_models(tmp_path):
    assert OllamaStore(tmp_path / "absent").models() == []


def test_find_matches_names_case_insensitively(root, store):
    put_model(root, "registry.ollama.ai/library/SmolLM2/latest")
    for text in ("smollm2", "SMOLLM2:LATEST", "registry.ollama.ai/library/smollm2:latest"):
        assert store.find(text).name == "SmolLM2:latest"


@pytest.mark.parametrize("text", ["absent", "smollm2:other", "../../etc/passwd", "", "a/b/c/d"])
def test_find_of_an_unknown_or_invalid_name_is_not_found_in_ollamas_words(root, store, text):
    put_model(root, SMOL)
    with pytest.raises(GatewayError) as caught:
        store.find(text)
    assert caught.value.kind is ErrorKind.NOT_FOUND
    assert caught.value.message == f"model '{text}' not found"


def test_find_of_a_broken_manifest_says_why(root, store):
    put_manifest(root, SMOL, b"{not json")
    with pytest.raises(GatewayError, match="model 'smollm2' cannot be used: not JSON") as caught:
        store.find("smollm2")
    assert caught.value.kind is ErrorKind.INTERNAL


def test_existing_name_takes_the_stored_spelling_part_by_part(root, store):
    put_model(root, "registry.ollama.ai/library/SmolLM2/latest")
    name = parse_name("smollm2:v2")
    assert name is not None
    assert store.existing_name(name).parts == ("registry.ollama.ai", "library", "SmolLM2", "v2")


def test_blob_path_refuses_digests_that_are_not_sha256(store):
    with pytest.raises(ValueError):
        store.blob_path("sha256:../../x")
    assert store.blob_path("sha256:" + "c" * 64).name == "sha256-" + "c" * 64


# -- copy and delete ------------------------------------------------------------------------------------------


def test_copy_writes_the_same_manifest_under_the_new_name(root, store):
    source = put_model(root, SMOL, [("template", b"T")])
    blobs = sorted((root / "blobs").iterdir())
    store.copy("smollm2", "mine/smol:v1")
    copied = root / "manifests" / "registry.ollama.ai" / "mine" / "smol" / "v1"
    assert copied.read_bytes() == source.read_bytes()
    assert sorted((root / "blobs").iterdir()) == blobs
    assert sorted(m.name for m in store.models()) == ["mine/smol:v1", "smollm2:latest"]


def test_copy_onto_itself_changes_nothing(root, store):
    source = put_model(root, SMOL)
    before = source.read_bytes()
    store.copy("smollm2", "SmolLM2:latest")
    assert source.read_bytes() == before
    assert [m.name for m in store.models()] == ["smollm2:latest"]


def test_copy_of_a_missing_model_is_not_found(store):
    with pytest.raises(GatewayError) as caught:
        store.copy("absent", "other")
    assert caught.value.kind is ErrorKind.NOT_FOUND
    assert caught.value.message == 'model "absent" not found'


@pytest.mark.parametrize("destination", ["../../escape", "a/b/c/d", "bad name", ""])
def test_copy_to_an_invalid_name_is_refused(root, store, destination):
    put_model(root, SMOL)
    with pytest.raises(GatewayError) as caught:
        store.copy("smollm2", destination)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert caught.value.message == f'destination "{destination}" is invalid'
    assert [m.name for m in store.models()] == ["smollm2:latest"]


def test_delete_removes_the_manifest_its_empty_folders_and_its_blobs(root, store):
    put_model(root, "registry.ollama.ai/user/only/latest", [("template", b"T")])
    store.delete("user/only")
    assert store.models() == []
    assert list((root / "blobs").iterdir()) == []
    assert list((root / "manifests").iterdir()) == []


def test_delete_keeps_blobs_other_models_use(root, store):
    put_model(root, SMOL, [("template", b"shared")])
    put_model(root, "registry.ollama.ai/library/smollm2/v2", [("template", b"shared"), ("system", b"own")])
    store.delete("smollm2:v2")
    [model] = store.models()
    assert model.template == "shared"
    remaining = {p.read_bytes() for p in (root / "blobs").iterdir()}
    assert b"own" not in remaining and b"shared" in remaining
    assert (root / "manifests" / "registry.ollama.ai" / "library" / "smollm2").is_dir()


def test_delete_after_copy_keeps_the_copy_working(root, store):
    put_model(root, SMOL)
    store.copy("smollm2", "backup")
    store.delete("smollm2")
    [model] = store.models()
    assert model.name == "backup:latest" and model.model_path.is_file()


def test_delete_is_case_insensitive(root, store):
    put_model(root, SMOL)
    store.delete("SmolLM2:LATEST")
    assert store.models() == []


def test_a_corrupt_manifest_does_not_pin_blobs(root, store):
    put_model(root, SMOL)
    put_manifest(root, "registry.ollama.ai/library/corrupt/latest", b"{oops")
    store.delete("smollm2")
    assert list((root / "blobs").iterdir()) == []


@pytest.mark.parametrize("text", ["absent", "../../../etc/passwd", "..", "a/b/c/d"])
def test_delete_of_a_missing_or_invalid_name_is_not_found_and_touches_nothing(root, store, text):
    put_model(root, SMOL)
    with pytest.raises(GatewayError) as caught:
        store.delete(text)
    assert caught.value.kind is ErrorKind.NOT_FOUND
    assert caught.value.message == f"model '{text}' not found"
    assert [m.name for m in store.models()] == ["smollm2:latest"]


# -- create ---------------------------------------------------------------------------------------------------


def test_create_stores_a_gguf_with_its_layers_and_reports_like_ollama(root, store, tmp_path):
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    events = []
    store.create("tiny", gguf, template="{{ .Prompt }}", system="Be brief.",
                 parameters={"stop": ["<end>"], "temperature": 0.7}, on_progress=events.append)
    [model] = store.models()
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert statuses(events) == ["parsing GGUF", f"creating new layer {digest}"] + [
        f"creating new layer {layer}" for layer in _layer_digests(model.manifest_path)[1:]
    ] + ["writing manifest", "success"]
    assert model.name == "tiny:latest" and model.digest == digest
    assert model.model_path.read_bytes() == gguf.read_bytes()
    assert (model.template, model.system) == ("{{ .Prompt }}", "Be brief.")
    assert model.parameters == {"stop": ["<end>"], "temperature": 0.7}
    assert model.config == {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                            "model_type": "135K", "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux"}
    manifest = json.loads(model.manifest_path.read_bytes())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert [layer["mediaType"].rsplit(".", 1)[-1] for layer in manifest["layers"]] == [
        "model", "template", "system", "params"]
    assert not [p for p in (root / "blobs").iterdir() if p.name.startswith(".tmp")]


def _layer_digests(manifest_path: Path) -> list[str]:
    return [layer["digest"] for layer in json.loads(manifest_path.read_bytes())["layers"]]


def test_create_hard_links_the_gguf_on_the_same_file_system(store, tmp_path):
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    store.create("tiny", gguf)
    [model] = store.models()
    assert model.model_path.stat().st_ino == gguf.stat().st_ino


def test_create_copies_when_a_link_is_impossible(store, tmp_path, monkeypatch):
    def no_link(*_args, **_kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(ollama_store.os, "link", no_link)
    gguf = tiny_gguf(tmp_path / "tiny.gguf", padding=3 << 20)
    store.create("tiny", gguf)
    [model] = store.models()
    assert model.model_path.stat().st_ino != gguf.stat().st_ino
    assert model.model_path.read_bytes() == gguf.read_bytes()
    assert model.digest == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()


def test_create_reuses_existing_layers(store, tmp_path):
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    store.create("tiny", gguf, system="S")
    events = []
    store.create("tiny:v2", gguf, system="S", on_progress=events.append)
    assert [s.split(" sha256:")[0] for s in statuses(events)] == [
        "parsing GGUF", "using existing layer", "using existing layer", "writing manifest", "success"]
    assert sorted(m.name for m in store.models()) == ["tiny:latest", "tiny:v2"]


def test_create_from_a_blob_of_the_store_does_not_hash_it_again(root, store, monkeypatch):
    path = put_model(root, SMOL)
    model = store.find("smollm2")
    monkeypatch.setattr(ollama_store, "_sha256_file", _must_not_hash)
    monkeypatch.setattr(ollama_store, "_copy_hashing", _must_not_hash)
    events = []
    store.create("smollm2-brief", model.model_path, system="Be brief.", on_progress=events.append)
    assert events[1].status == f"using existing layer {model.digest}"
    assert store.find("smollm2-brief").model_path == model.model_path
    assert path.is_file()


def _must_not_hash(*_args):
    raise AssertionError("an existing blob was hashed again")


def test_create_over_an_existing_model_frees_the_blobs_only_it_used(root, store, tmp_path):
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    store.create("tiny", gguf, template="old template")
    store.create("tiny", gguf, template="new template")
    assert store.find("tiny").template == "new template"
    contents = {p.read_bytes() for p in (root / "blobs").iterdir()}
    assert b"old template" not in contents and b"new template" in contents


def test_create_lands_in_the_stored_spelling_of_an_existing_model(root, store, tmp_path):
    put_model(root, "registry.ollama.ai/library/SmolLM2/latest")
    store.create("smollm2:v2", tiny_gguf(tmp_path / "tiny.gguf"))
    assert sorted(m.name for m in store.models()) == ["SmolLM2:latest", "SmolLM2:v2"]


def test_create_refuses_a_file_that_is_not_gguf(root, store, tmp_path):
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"PK\x03\x04 zip file")
    events = []
    with pytest.raises(GatewayError, match="not a GGUF file") as caught:
        store.create("tiny", not_gguf, on_progress=events.append)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert statuses(events) == ["parsing GGUF"]
    assert store.models() == [] and not (root / "blobs").exists()


def test_create_refuses_a_missing_file(store, tmp_path):
    with pytest.raises(GatewayError, match="cannot read GGUF file") as caught:
        store.create("tiny", tmp_path / "absent.gguf")
    assert caught.value.kind is ErrorKind.INVALID_REQUEST


@pytest.mark.parametrize("name", ["../../escape", "bad name", "a/b/c/d", ""])
def test_create_refuses_invalid_names(store, tmp_path, name):
    with pytest.raises(GatewayError, match="invalid model name") as caught:
        store.create(name, tiny_gguf(tmp_path / "tiny.gguf"))
    assert caught.value.kind is ErrorKind.INVALID_REQUEST


def test_a_created_model_survives_deleting_the_source_file(store, tmp_path):
    gguf = tiny_gguf(tmp_path / "tiny.gguf")
    store.create("tiny", gguf)
    gguf.unlink()
    assert store.find("tiny").model_path.read_bytes() == gguf_bytes()


def test_manifest_digests_and_remove_unused_blobs(root, store):
    path = put_model(root, SMOL, [("system", b"S")])
    digests = store.manifest_digests(store.locate("smollm2"))
    assert digests == {layer["digest"] for layer in json.loads(path.read_bytes())["layers"]} | {
        json.loads(path.read_bytes())["config"]["digest"]}
    orphan = put_blob(root, b"orphan")["digest"]
    store.remove_unused_blobs(digests | {orphan, "sha256:../../x"})
    assert store.find("smollm2").system == "S"
    assert not store.blob_path(orphan).exists()
