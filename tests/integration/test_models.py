"""Models found in `--models-dir` folders are served under their file stem, next to the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

import openai
import pytest

from gateway.models.embedded import embedded_model_path
from tests.integration.support import DEFAULT_CONFIG, MODEL, REPO_ROOT, GatewayServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("models")
    os.symlink(embedded_model_path(), folder / "tiny-chat.gguf")
    (folder / "notes.txt").write_text("not a model")
    return folder


@pytest.fixture(scope="module")
def dir_server(models_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with GatewayServer(tmp_path_factory.mktemp("gateway-dir"), DEFAULT_CONFIG,
                       extra_args=["--models-dir", str(models_dir)]) as gw:
        yield gw


def test_models_command_lists_folder_models_by_stem(models_dir):
    out = subprocess.run([sys.executable, "-m", "gateway", "models", "--models-dir", str(models_dir)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    names = [line.split("\t")[0] for line in out.splitlines()]
    assert sorted(names) == sorted(["tiny-chat", MODEL])


def test_a_folder_model_is_listed_and_served(dir_server):
    client = dir_server.client()
    assert {"tiny-chat", MODEL} <= {m.id for m in client.models.list()}
    reply = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4, temperature=0)
    assert reply.model == "tiny-chat"
    assert reply.usage.completion_tokens > 0


def test_a_path_is_never_a_model_name(dir_server, models_dir):
    client = dir_server.client()
    for name in ["../tiny-chat", str(models_dir / "tiny-chat.gguf"), "tiny-chat.gguf", "notes"]:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
