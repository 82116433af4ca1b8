"""When the runner's weights go on huge pages: the system checks against fixture files and C library names, the
GLIBC_TUNABLES value a runner starts with, and that a process started inside `SpawnEnvironment` really gets it
while the environment around it is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.engine import huge_pages

GLIBC = "glibc 2.36"


def thp(tmp_path, modes: str) -> str:
    path = tmp_path / "enabled"
    path.write_text(modes + "\n")
    return str(path)


@pytest.mark.parametrize("modes", ["always [madvise] never", "[always] madvise never"])
def test_available_where_the_system_gives_huge_pages_on_request_or_always(tmp_path, modes):
    assert huge_pages.unavailable_reason(thp(tmp_path, modes), GLIBC) is None


@pytest.mark.parametrize(("modes", "libc", "reason"), [
    ("always madvise [never]", GLIBC, "[never]"),
    (None, GLIBC, "no transparent huge pages"),
    ("always [madvise] never", "glibc 2.31", "older than 2.35"),
    ("always [madvise] never", "", "not glibc"),
    ("always [madvise] never", "glibc unknown", "unknown"),
])
def test_unavailable_says_why(tmp_path, modes, libc, reason):
    path = thp(tmp_path, modes) if modes else str(tmp_path / "missing")
    assert reason in huge_pages.unavailable_reason(path, libc)


def test_unavailable_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "Linux only" in huge_pages.unavailable_reason()
    assert huge_pages.resolve(True) is False
    assert "no huge pages" in huge_pages.describe(True)


def test_resolve_and_describe_follow_the_setting_and_the_system(monkeypatch):
    monkeypatch.setattr(huge_pages, "unavailable_reason", lambda: None)
    assert huge_pages.resolve(True) is True and huge_pages.resolve(False) is False
    assert "on transparent huge pages" in huge_pages.describe(True)
    assert "huge_pages: false" in huge_pages.describe(False)


@pytest.mark.parametrize(("before", "after"), [
    (None, "glibc.malloc.hugetlb=1"),
    ("", "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2", "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"),
])
def test_the_tunable_is_added_to_what_the_user_set(before, after):
    assert huge_pages.with_tunable(before) == after


def child_tunables() -> str:
    code = "import os; print(os.environ.get('GLIBC_TUNABLES', '-'))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("before", [None, "glibc.malloc.arena_max=2"])
def test_a_process_started_inside_gets_the_tunable_and_the_environment_is_restored(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", before)
    with huge_pages.SpawnEnvironment(True):
        started = child_tunables()
    assert started == huge_pages.with_tunable(before)
    assert os.environ.get("GLIBC_TUNABLES") == before
    assert child_tunables() == (before or "-")


def test_off_changes_nothing(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with huge_pages.SpawnEnvironment(False):
        assert child_tunables() == "-"


def test_huge_page_bytes_reads_smaps_rollup(tmp_path):
    rollup = tmp_path / "smaps_rollup"
    rollup.write_text("55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  350628 kB\nAnonHugePages:  294912 kB\n")
    assert huge_pages.huge_page_bytes(str(rollup)) == 294912 * 1024
    assert huge_pages.huge_page_bytes(str(tmp_path / "missing")) == 0


def test_a_c_library_that_does_not_name_itself_is_not_glibc(monkeypatch):
    def no_such_name(name):
        raise ValueError("unrecognized configuration name")
    monkeypatch.setattr(os, "confstr", no_such_name)
    assert "not glibc" in huge_pages.unavailable_reason()
