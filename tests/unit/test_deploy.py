"""The deployment files: the systemd user unit as installed for this checkout passes `systemd-analyze verify`,
the Dockerfiles pass hadolint, and the compose file asks for what the README promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"


def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = subprocess.run([str(SYSTEMD / "install-user-service.sh"), "--print-unit"], capture_output=True,
                          text=True, check=True).stdout
    assert "@REPO@" not in unit and f"WorkingDirectory={ROOT}" in unit
    assert "Restart=on-failure" in unit and "EnvironmentFile=-%h/.config/llm-gateway/env" in unit
    path = tmp_path / "llm-gateway.service"
    path.write_text(unit)
    verify = subprocess.run([_tool("systemd-analyze"), "verify", str(path)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_a_broken_unit_fails_the_same_check(tmp_path: Path) -> None:
    """The check above can fail: a unit whose program does not exist is refused."""
    path = tmp_path / "broken.service"
    path.write_text("[Service]\nExecStart=/nonexistent/python -m gateway serve\n")
    verify = subprocess.run([_tool("systemd-analyze"), "verify", str(path)], capture_output=True, text=True)
    assert verify.returncode != 0 or verify.stderr.strip()


def test_the_dockerfiles_pass_hadolint() -> None:
    files = [str(ROOT / "docker" / name) for name in ("Dockerfile", "Dockerfile.cuda")]
    lint = subprocess.run([_tool("hadolint"), "--failure-threshold", "warning", *files], capture_output=True,
                          text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_compose_reserves_gpus_mounts_models_and_checks_health() -> None:
    service = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())["services"]["gateway"]
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.cuda"}
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert any(v.endswith(":/models:ro") for v in service["volumes"])
    assert any(v.endswith(":/ollama") for v in service["volumes"])
    assert "/health" in " ".join(service["healthcheck"]["test"])


def _tool(name: str) -> str:
    """CI installs systemd and hadolint (.ci/run, requirements-dev.txt); a missing one fails, never skips."""
    found = shutil.which(name) or shutil.which(name, path=str(ROOT / ".venv" / "bin"))
    assert found, f"{name} is not installed"
    return found
