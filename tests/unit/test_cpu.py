"""The repack choice against real /proc/cpuinfo texts: off by default where the CPU reports AMX (llama.cpp
#20824), on elsewhere, and a model's own `repack` setting always wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.engine.cpu import cpu_features, parse_cpuinfo, resolve_repack

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize(("fixture", "amx", "repack"), [
    ("cpuinfo-sapphire-rapids.txt", True, False),
    ("cpuinfo-ice-lake.txt", False, True),
    ("cpuinfo-graviton.txt", False, True),
])
def test_repacking_is_off_by_default_only_on_amx(fixture, amx, repack):
    cpu = cpu_features(str(FIXTURES / fixture))
    assert cpu.amx is amx
    assert resolve_repack(None, cpu) is repack


@pytest.mark.parametrize("setting", [True, False])
def test_a_models_setting_wins_over_the_cpu_default(setting):
    cpu = cpu_features(str(FIXTURES / "cpuinfo-sapphire-rapids.txt"))
    assert resolve_repack(setting, cpu) is setting


def test_the_description_names_the_features_and_the_repack_mode():
    amx = cpu_features(str(FIXTURES / "cpuinfo-sapphire-rapids.txt")).describe()
    assert "Xeon(R) Platinum 8481C" in amx and "amx_tile" in amx and "avx512f" in amx
    assert "repacking off by default" in amx and "#20824" in amx
    plain = cpu_features(str(FIXTURES / "cpuinfo-ice-lake.txt")).describe()
    assert "amx" not in plain and "repacking on by default" in plain


def test_arm_features_are_read_and_a_missing_file_means_no_features(tmp_path):
    assert "asimd" in parse_cpuinfo((FIXTURES / "cpuinfo-graviton.txt").read_text()).flags
    missing = cpu_features(str(tmp_path / "nope"))
    assert not missing.flags and missing.default_repack()
