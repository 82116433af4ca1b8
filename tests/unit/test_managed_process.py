"""Managed servers with real process trees: `tree_server.py` serves /health and starts a worker that ignores
SIGTERM (with a child of its own) and a sleeper, so a stop that only signals the top process, or only sends
SIGTERM, leaves orphans that these tests find in /proc. Waits poll with generous deadlines; nothing is timed."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.managed import ManagedServer, ServerError, create_server, list_endpoints
from gateway.managed.process import Pidfile, group_members, read_proc, start_time
from gateway.managed.server import restart_delay
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
TREE = Path(__file__).parent / "fixtures" / "tree_server.py"
DEADLINE = 60.0


def running(pid: int) -> bool:
    info = read_proc(pid)
    return info is not None and info.state != "Z"


def tree_server(tmp_path: Path, **kwargs) -> ManagedServer:
    pids = tmp_path / "pids"
    extra = ["--escape"] if kwargs.pop("escape", False) else []
    return ManagedServer(engine="command", command=[sys.executable, str(TREE), "--port", "{port}", "--pids", str(pids),
                                                    *extra],
                         output_dir=tmp_path, name="tree", stop_grace=0.5, heartbeat_interval=0.1, **kwargs)


def tree_pids(tmp_path: Path) -> list[int]:
    return [int(line) for line in (tmp_path / "pids").read_text().split()]


def test_stop_ends_the_whole_tree_even_a_worker_that_ignores_sigterm(tmp_path):
    with tree_server(tmp_path) as server:
        assert server.healthy()
        pids = tree_pids(tmp_path)
        assert len(pids) == 4 and all(running(pid) for pid in pids)
        assert {p.pid for p in group_members(server.pid)} == set(pids)
        leader = server.pid
    assert [pid for pid in pids if running(pid)] == []
    assert group_members(leader) == []
    assert not (tmp_path / "tree.pid").exists()
    assert server.health == "stopped" and server.pid is None


def test_the_log_starts_with_the_command_line_and_the_environment_reaches_the_server(tmp_path):
    command = [sys.executable, "-c", "import os, sys; print('value=' + os.environ['MANAGED_TEST'] + "
               "os.environ['SEED_NAME']); sys.exit(3)", "{port}"]
    server = ManagedServer(engine="command", command=command, env={"MANAGED_TEST": "42"}, output_dir=tmp_path,
                           name="env", startup_timeout=DEADLINE, env_vars={"SEED_NAME": "!"})  # the seed's name
    with pytest.raises(ServerError, match="exited with code 3 while starting") as failure:
        server.start()
    assert "value=42!" in str(failure.value)
    first, *rest = server.log_file.read_text().splitlines()
    assert first.startswith(f"$ {sys.executable} -c ") and first.endswith(f" {server.port}")
    assert rest == ["value=42!"]
    assert list_endpoints() == [] and server.health == "stopped"


def test_a_profiler_prefix_wraps_the_command(tmp_path):
    server = tree_server(tmp_path, prefix="env PREFIXED=1")
    with server:
        assert server.argv[:2] == ["env", "PREFIXED=1"]
        assert server.log_file.read_text().startswith("$ env PREFIXED=1 " + sys.executable)
        environ = Path(f"/proc/{tree_pids(tmp_path)[0]}/environ").read_bytes().split(b"\0")
        assert b"PREFIXED=1" in environ


def test_a_server_that_never_gets_healthy_is_stopped_when_its_startup_time_is_over(tmp_path):
    server = ManagedServer(engine="command", command=[sys.executable, "-c", "import time; time.sleep(600)"],
                           output_dir=tmp_path, name="silent", startup_timeout=1, stop_grace=0.5)
    with pytest.raises(ServerError, match=r"not healthy at http://127\.0\.0\.1:\d+/health within 1 s"):
        server.start()
    assert server.pid is None and list_endpoints() == []


def test_list_endpoints_shows_each_live_server(tmp_path):
    with tree_server(tmp_path) as server:
        assert list_endpoints() == [{
            "name": "tree", "engine": "command", "model": None, "url": f"http://127.0.0.1:{server.port}/v1",
            "pid": server.pid, "health": "ok", "log_file": str(tmp_path / "tree.log"), "restarts": 0,
            "command": server.endpoint["command"], "concurrency": None}]
        with pytest.raises(ValueError, match="'tree' already runs"):
            tree_server(tmp_path).start()
    assert list_endpoints() == []


def test_the_heartbeat_restarts_a_killed_server_after_stopping_what_it_left(tmp_path):
    with tree_server(tmp_path) as server:
        old = tree_pids(tmp_path)
        port = server.port
        os.kill(server.pid, signal.SIGKILL)  # the top process only, as a crash would: its workers stay
        wait_for(lambda: server.restarts == 1 and server.health == "ok", "the restart")
        assert [pid for pid in old if running(pid)] == []
        assert server.port == port and server.healthy() and server.pid != old[0]
        assert server.deaths[0]["reason"] == f"exit code {-signal.SIGKILL}"
        new = tree_pids(tmp_path)
        assert server.log_file.read_text().count("$ ") == 2
    assert [pid for pid in new if running(pid)] == []


def test_debug_mode_lists_the_tree_and_kills_a_process_that_left_the_group(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.managed")
    with tree_server(tmp_path, escape=True, debug=True):
        pids = tree_pids(tmp_path)
        escaped = pids[-1]
        assert read_proc(escaped).pgid != pids[0]
    assert [pid for pid in pids if running(pid)] == []
    assert "process tree" in caplog.text and f"process {escaped} outlived its group's stop" in caplog.text


def test_a_restarted_gateway_stops_the_servers_its_previous_run_left(tmp_path):
    """The first gateway is a separate process, killed with SIGKILL: its servers run in sessions of their own,
    so they outlive it, and only the pidfile leads the next run to them."""
    script = ("import sys, time\n"
              "from tests.unit.test_managed_process import tree_server\n"
              "from pathlib import Path\n"
              "print(tree_server(Path(sys.argv[1])).start().pid, flush=True)\n"
              "time.sleep(600)\n")
    first = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    try:
        old_leader = int(first.stdout.readline())
        old = tree_pids(tmp_path)
        with pytest.raises(RuntimeError, match=f"process {first.pid} still manages this server"):
            tree_server(tmp_path).start()
        first.kill()
        first.wait()
        assert all(running(pid) for pid in old)
        with tree_server(tmp_path) as server:
            assert [pid for pid in old if running(pid)] == []
            assert server.pid != old_leader and server.healthy()
    finally:
        first.kill()
        first.wait()
        if group_members(old_leader):  # the test failed before the second run could stop it
            os.killpg(old_leader, signal.SIGKILL)


def test_a_pidfile_whose_leader_pid_was_reused_is_left_alone(tmp_path):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        pidfile = tmp_path / "x.pid"
        pidfile.write_text(json.dumps({"owner": gone.pid, "owner_start": 1, "pgid": stranger.pid,
                                       "leader_start": start_time(stranger.pid) + 1, "argv": ["x"]}))
        Pidfile(pidfile).clean_up(grace=0.5)
        assert running(stranger.pid) and not pidfile.exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_create_server_returns_a_ready_server(tmp_path):
    server = create_server(backend="command", command=[sys.executable, str(TREE), "--port", "{port}", "--pids",
                                                       str(tmp_path / "pids")], output_dir=tmp_path, stop_grace=0.5)
    try:
        assert server.health == "ok" and server.healthy()
        assert server.name == "command-" + Path(sys.executable).name
    finally:
        server.stop()
    assert [pid for pid in tree_pids(tmp_path) if running(pid)] == []


def test_deaths_in_a_row_wait_longer_and_longer_up_to_a_minute():
    assert [restart_delay(n) for n in range(9)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
