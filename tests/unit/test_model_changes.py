"""Store changes run one at a time: a delete cannot remove a blob that a concurrent pull or create just reused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.model_changes import ModelChanges
from gateway.models.registry import ModelRegistry
from gateway.types import GatewayError, ModelChange, Progress


class NoPool:
    def unload(self, name: str) -> bool:
        return False

    def retire_changed(self, current) -> list[str]:
        return []


@pytest.fixture
def changes(tmp_path: Path) -> ModelChanges:
    store = tmp_path / "store"
    registry = ModelRegistry.discover([], [], {}, include_embedded=True, ollama_root=str(store))
    return ModelChanges(registry, NoPool(), str(store))


def test_a_second_change_waits_for_the_first_and_says_so(changes, monkeypatch):
    monkeypatch.setattr("gateway.model_changes.STORE_WAIT_POLL", 0.01)
    copying, release, order = threading.Event(), threading.Event(), []

    def slow_copy(store, change):
        copying.set()
        release.wait(10)
        order.append("copy done")

    monkeypatch.setattr(changes, "_copy", slow_copy)
    monkeypatch.setattr(changes, "_delete", lambda store, change: order.append("delete"))
    first = threading.Thread(target=changes.run, args=(ModelChange("copy", "b", "a"), lambda p: None, lambda: False))
    first.start()
    assert copying.wait(10)
    reports: list[Progress] = []
    second = threading.Thread(target=changes.run, args=(ModelChange("delete", "b"), reports.append, lambda: False))
    second.start()
    while not reports:
        threading.Event().wait(0.01)
    assert reports[0].status == "waiting for another change to the model store" and order == []
    release.set()
    first.join(10)
    second.join(10)
    assert order == ["copy done", "delete"]


def test_a_waiting_change_whose_client_left_gives_up(changes, monkeypatch):
    monkeypatch.setattr("gateway.model_changes.STORE_WAIT_POLL", 0.01)
    changes._store_lock.acquire()
    try:
        with pytest.raises(GatewayError, match="cancelled"):
            changes.run(ModelChange("delete", "b"), lambda p: None, lambda: True)
    finally:
        changes._store_lock.release()


def test_at_start_the_unfinished_downloads_a_stopped_server_left_are_removed(tmp_path: Path):
    blobs = tmp_path / "store" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"sha256-{'a' * 64}-partial").write_bytes(b"half")
    (blobs / f"sha256-{'b' * 64}").write_bytes(b"whole")
    registry = ModelRegistry.discover([], [], {}, include_embedded=True, ollama_root=str(tmp_path / "store"))
    ModelChanges(registry, NoPool(), str(tmp_path / "store"))
    assert sorted(p.name for p in blobs.iterdir()) == [f"sha256-{'b' * 64}"]
