"""One engine process group: start it in a session of its own, stop all of it, and clean up after a crash.

Engines are trees of processes (vLLM's API server, its engine core and a worker per GPU; SGLang's scheduler
and detokenizer; anything under a profiler). Killing the top one is not enough: SIGKILL on vLLM's API server
leaves its engine and workers alive and holding GPU memory. So every server is started with
`start_new_session=True`, which makes it the leader of a new process group, and stopping means the whole group:
SIGTERM, a grace period, SIGKILL, then a scan of /proc until no process of the group is left.

A pidfile records each group, so a gateway that was killed (SIGKILL, OOM) and started again finds the groups of
its previous run and stops them before it starts new ones, rather than finding the GPU full.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from gateway.time_slice import DefaultSlice

log = logging.getLogger("gateway.managed")

POLL = 0.05  # seconds between looks at /proc while waiting for a group to end


class OrphanError(RuntimeError):
    """Processes of a group survived SIGKILL (stuck in the kernel, or ptrace-stopped); they are named."""


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    start: int  # clock ticks since boot: with the pid, identifies a process even after pid reuse
    cmdline: str


def read_proc(pid: int) -> ProcInfo | None:
    """The process's /proc facts, or None when it is gone. Fields after the command name are split from the
    last `)`, since the name itself may contain spaces and parentheses."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    cmdline = " ".join(raw.decode(errors="replace").split("\0")).strip()
    return ProcInfo(pid, int(fields[1]), int(fields[2]), fields[0], int(fields[19]), cmdline)


def all_processes() -> list[ProcInfo]:
    infos = (read_proc(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [info for info in infos if info is not None]


def group_members(pgid: int) -> list[ProcInfo]:
    """The live processes of a group. Zombies are left out: they hold no memory, and only their parent (or
    init) can reap them."""
    return [p for p in all_processes() if p.pgid == pgid and p.state != "Z"]


def process_tree(pid: int) -> list[ProcInfo]:
    """`pid` and every descendant, by parent links: this finds children that left the group with setsid, which
    a group scan cannot."""
    procs = all_processes()
    children: dict[int, list[ProcInfo]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    tree = [p for p in procs if p.pid == pid]
    for p in tree:  # grows while it is walked: a breadth-first walk
        tree.extend(children.get(p.pid, []))
    return tree


def start_time(pid: int) -> int | None:
    info = read_proc(pid)
    return info.start if info else None


class ProcessGroup:
    """A started engine: the leader's Popen and the group it leads (its pgid is the leader's pid)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, note: str = ""):
        """Start `argv` with `env` added to this process's environment; its output, after a first line with the
        command line (and `note`, e.g. which restart this is), goes to `log_path`, appended."""
        self.argv = list(argv)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"{note}$ {shlex.join(self.argv)}\n")
            log_file.flush()
            with DefaultSlice():  # an engine decodes: it keeps the kernel's default slice
                self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log_file,
                                              stderr=subprocess.STDOUT, env={**os.environ, **env},
                                              start_new_session=True)
        self.pid = self.popen.pid
        self.start = start_time(self.pid)

    def alive(self) -> bool:
        """Whether the leader still runs (it is reaped here, so it does not linger as a zombie)."""
        return self.popen.poll() is None

    def members(self) -> list[ProcInfo]:
        self.popen.poll()
        return group_members(self.pid)

    def stop(self, grace: float, debug: bool = False) -> None:
        """SIGTERM to the group, up to `grace` seconds for it to end, SIGKILL to what is left, then wait until
        no process of the group is left. With `debug`, the process tree is logged before, and each process of
        it, in the group or not, is checked to be gone after (one that left the group is killed and named)."""
        tree = process_tree(self.pid) if debug else []
        if debug:
            log.info("stopping %s; process tree:\n%s", self.pid, "\n".join(_describe(p) for p in tree))
        stop_group(self.pid, grace, self.popen)
        if debug:
            escaped = [p for p in tree if _still_running(p)]
            for p in escaped:
                log.error("process %d outlived its group's stop (it left the group); killing it: %s",
                          p.pid, p.cmdline)
                _signal(p.pid, signal.SIGKILL, os.kill)
            deadline = time.monotonic() + 10.0  # SIGKILL is delivered asynchronously: see each one gone
            while any(_still_running(p) for p in escaped) and time.monotonic() < deadline:
                time.sleep(POLL)
            if not escaped:
                log.info("group %d stopped; none of its %d processes is left", self.pid, len(tree))


def stop_group(pgid: int, grace: float, leader: subprocess.Popen | None = None) -> None:
    """Stop every process of group `pgid`; `leader`, when it is our child, is reaped along the way. Raises
    OrphanError if any survive SIGKILL for 10 s."""
    _signal(pgid, signal.SIGTERM, os.killpg)
    if not _wait_empty(pgid, grace, leader):
        log.warning("group %d did not end within %.0f s of SIGTERM; sending SIGKILL", pgid, grace)
        _signal(pgid, signal.SIGKILL, os.killpg)
        if not _wait_empty(pgid, 10.0, leader):
            left = group_members(pgid)
            raise OrphanError(f"group {pgid}: {len(left)} processes survived SIGKILL: "
                              + "; ".join(_describe(p) for p in left))


def _wait_empty(pgid: int, timeout: float, leader: subprocess.Popen | None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if leader is not None:
            leader.poll()
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def _signal(target: int, sig: int, send) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone, or a pid now someone else's
        send(target, sig)


def _still_running(p: ProcInfo) -> bool:
    """The same process (not a reuse of its pid), and not a zombie."""
    now = read_proc(p.pid)
    return now is not None and now.start == p.start and now.state != "Z"


def _describe(p: ProcInfo) -> str:
    return f"  pid {p.pid} ppid {p.ppid} pgid {p.pgid} [{p.state}] {p.cmdline}"


class Pidfile:
    """`<name>.pid` in the server's output folder: the group this gateway process started, and which gateway
    process that was. A gateway that finds a pidfile whose owner is gone stops the group it names."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, group: ProcessGroup) -> None:
        record = {"owner": os.getpid(), "owner_start": start_time(os.getpid()), "pgid": group.pid,
                  "leader_start": group.start, "argv": group.argv}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def clean_up(self, grace: float) -> None:
        """Stop the group a previous run left. Refuses when the owner still runs (another live gateway manages
        that server). A leader that is alive with another start time is a new process that reused the pid, so
        the group is not ours; a dead leader cannot have had its pid reused while its group still has members,
        so those members are ours."""
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable pidfile %s: %s", self.path, exc)
            self.remove()
            return
        owner = record.get("owner")
        if owner != os.getpid() and start_time(owner) is not None and start_time(owner) == record["owner_start"]:
            raise RuntimeError(f"{self.path}: process {owner} still manages this server; give each server its "
                               f"own name or output_dir")
        pgid = record["pgid"]
        leader = start_time(pgid)
        if leader is not None and leader != record["leader_start"]:
            log.info("pidfile %s: group %d is gone (its pid now belongs to another process)", self.path, pgid)
        elif group_members(pgid):
            log.warning("stopping group %d left by a previous run (%s)", pgid, shlex.join(record["argv"]))
            stop_group(pgid, grace)
        self.remove()
