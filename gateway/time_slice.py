"""Short scheduler time slices for the API process's threads, so that a token reaches its client at once.

On two busy cores every token wakes a stream thread of the API process while llama.cpp's threads are already
decoding the next step. Linux's EEVDF scheduler lets a woken thread preempt the running one only when the woken
thread's deadline comes first, and a thread's deadline lies one slice ahead of it. With the default slice
(1.4 ms on 2 CPUs) about one token in twenty waited some 3 ms for a decode thread's slice to run out before its
stream thread ran (a `perf` trace of the bench at one stream; bench/README.md, "The single-stream tail"). A thread
that asks for a short slice (`sched_attr.sched_runtime`, honoured since Linux 6.12, no privilege needed)
preempts at once. Its share of the CPU stays what it was: the slice sets how soon a thread runs, not how much.

Threads and child processes inherit the slice of the thread that creates them. Processes that decode (a model's
runner, a managed engine) are therefore started under `DefaultSlice()`, which keeps the kernel's default for
them. Kernels without the feature, other systems and seccomp filters that refuse the call leave everything as it
was; the startup log says which.
"""

from __future__ import annotations

import ctypes
import os
import platform
from contextlib import suppress

_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275)}  # (sched_setattr, getattr)
_FAIR_POLICIES = (0, 3, 5)  # SCHED_OTHER, SCHED_BATCH, SCHED_IDLE: the policies whose slice this sets
MIN_US, MAX_US = 100, 100_000  # the range the kernel accepts


class _SchedAttr(ctypes.Structure):
    """`struct sched_attr`, its first version (48 bytes), as in <linux/sched/types.h>."""

    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64)]


class _Calls:
    """sched_getattr and sched_setattr by number: Python has no binding, and glibc wraps them only since 2.41."""

    def __init__(self):
        self.numbers = _SYSCALLS.get(platform.machine()) if os.name == "posix" else None
        self.libc = ctypes.CDLL(None, use_errno=True) if self.numbers else None

    def get(self, tid: int) -> _SchedAttr:
        attr = _SchedAttr()
        self._call(self.numbers[1], tid, ctypes.byref(attr), ctypes.sizeof(attr), 0)
        return attr

    def set_runtime(self, tid: int, runtime_ns: int) -> None:
        """Set one thread's slice request (0: the kernel's default), keeping its policy and nice value. A thread
        under a real-time policy has no slice and is left alone."""
        attr = self.get(tid)
        if attr.policy in _FAIR_POLICIES:
            attr.size, attr.flags, attr.runtime = ctypes.sizeof(attr), 0, runtime_ns
            self._call(self.numbers[0], tid, ctypes.byref(attr), 0)

    def _call(self, number: int, *args) -> None:
        if self.libc.syscall(number, *args) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))


_calls = _Calls()
_requested_ns = 0  # the slice `shorten` set for this process's threads; 0 while they have the kernel's default


def shorten(slice_us: int) -> str:
    """Ask for `slice_us` for every thread of this process (0: leave the kernel's default). Says what came of it,
    for the startup log."""
    if not slice_us:
        return "the kernel's default (http_slice_us is 0)"
    if _calls.numbers is None:
        return f"the kernel's default (no sched_setattr on {platform.system()} {platform.machine()})"
    try:
        for tid in (int(t) for t in os.listdir("/proc/self/task")):
            with suppress(ProcessLookupError):  # the thread ended meanwhile
                _calls.set_runtime(tid, slice_us * 1000)
        taken = _calls.get(0).runtime
    except OSError as exc:  # a seccomp filter
        return f"the kernel's default (sched_setattr: {exc.strerror})"
    if taken != slice_us * 1000:
        return "the kernel's default (this kernel does not take a slice request; Linux 6.12+ does)"
    global _requested_ns
    _requested_ns = taken
    return f"{slice_us} µs"


def slice_ns(tid: int = 0) -> int | None:
    """A thread's slice as the kernel reports it (any process's thread); None where it cannot be read."""
    if _calls.numbers is None:
        return None
    try:
        return _calls.get(tid).runtime
    except OSError:
        return None


class DefaultSlice:
    """`with DefaultSlice():` the calling thread has the kernel's default slice, so that a process it starts
    inherits that rather than the API's short one."""

    def __enter__(self) -> None:
        if _requested_ns:
            _set_own(0)

    def __exit__(self, *_exc) -> None:
        if _requested_ns:
            _set_own(_requested_ns)


def _set_own(runtime_ns: int) -> None:
    with suppress(OSError):  # shorten() did the same a moment ago; at worst a child keeps the short slice
        _calls.set_runtime(0, runtime_ns)
