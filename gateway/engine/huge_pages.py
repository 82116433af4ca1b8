"""Model weights on 2 MiB pages, which makes a single stream on a CPU decode 4-6% faster.

Each decode step reads every weight once: 85 MB for SmolLM2, some 21,000 pages of 4 KiB, more than any TLB holds,
so every step pays for page-table walks. llama.cpp maps the GGUF file by default, and a file's pages stay at 4 KiB
on the usual file systems. Weights read into the runner's own (anonymous) memory can sit on transparent huge
pages instead. Linux gives those only where a process asks for them (`madvise`, the usual system setting) or
everywhere (`always`).

llama.cpp allocates its buffers with `posix_memalign`, out of reach of an `madvise` from here. So the runner
asks glibc to make the request for each large allocation: the tunable `glibc.malloc.hugetlb=1` (glibc 2.35 and
later) has malloc `madvise(MADV_HUGEPAGE)` the memory it maps. The KV cache and llama.cpp's compute buffers get
the same pages. glibc reads tunables only when a process starts, so `SpawnEnvironment` sets the variable while
a runner is started. The API process is left as it is.

Measured with llama-batched-bench on SmolLM2, one stream on 2 cores, 6 alternations (bench/README.md, "Weights
on huge pages"): mapped from the file, 112.6-114.6 tok/s; in own memory on 4 KiB pages, 109.8-113.3; in own
memory on huge pages, 117.4-121.1.

What it changes otherwise: the weights count as the runner's memory rather than as the file's page cache. Two
runners of one file no longer share them, and under memory pressure they are swapped rather than dropped. The
setting `huge_pages: false` (per model, or for all) maps the file as before.
"""

from __future__ import annotations

import os
import sys
import threading

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
TUNABLE = "glibc.malloc.hugetlb=1"
MIN_GLIBC = (2, 35)

_environ_lock = threading.Lock()  # one runner start at a time changes the environment


def unavailable_reason(thp_path: str = THP_ENABLED, libc: str | None = None) -> str | None:
    """Why weights cannot go on huge pages here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"not on {sys.platform} (Linux only)"
    libc = libc if libc is not None else _libc_version()
    name, _, version = libc.partition(" ")
    if name != "glibc":
        return "the C library is not glibc"
    try:
        if tuple(int(part) for part in version.split(".")[:2]) < MIN_GLIBC:
            return f"glibc {version} is older than 2.35"
    except ValueError:
        return f"glibc version {version!r} is unknown"
    try:
        with open(thp_path) as f:
            modes = f.read()
    except OSError:
        return "the kernel has no transparent huge pages"
    if "[never]" in modes:
        return "transparent huge pages are off on this system ([never])"
    return None


def _libc_version() -> str:
    """`glibc 2.36`; empty where the C library does not say (musl raises for the name)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return ""


def resolve(wanted: bool) -> bool:
    """Whether a runner loads its weights onto huge pages: when `wanted` and the system can."""
    return wanted and unavailable_reason() is None


def describe(wanted: bool) -> str:
    """One line for the startup log and `gateway check`."""
    if not wanted:
        return "model weights mapped from their files (huge_pages: false)"
    reason = unavailable_reason()
    if reason is not None:
        return f"model weights mapped from their files: no huge pages, {reason}"
    return "model weights in each runner's memory on transparent huge pages"


def with_tunable(value: str | None) -> str:
    """GLIBC_TUNABLES with the huge-page tunable added (a value the user set for hugetlb is kept)."""
    if not value:
        return TUNABLE
    if any(item.split("=", 1)[0] == "glibc.malloc.hugetlb" for item in value.split(":")):
        return value
    return f"{value}:{TUNABLE}"


class SpawnEnvironment:
    """Within it, a process started inherits GLIBC_TUNABLES with the huge-page tunable (when `on`); the API
    process's own environment is as before once it ends. A class, not a generator: only routes.py and the event
    loops yield (tests/unit/test_layering.py)."""

    def __init__(self, on: bool):
        self.on = on
        self._before: str | None = None

    def __enter__(self) -> SpawnEnvironment:
        if self.on:
            _environ_lock.acquire()
            self._before = os.environ.get("GLIBC_TUNABLES")
            os.environ["GLIBC_TUNABLES"] = with_tunable(self._before)
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.on:
            return
        if self._before is None:
            del os.environ["GLIBC_TUNABLES"]
        else:
            os.environ["GLIBC_TUNABLES"] = self._before
        _environ_lock.release()


def huge_page_bytes(path: str = "/proc/self/smaps_rollup") -> int:
    """How much of this process's memory is on transparent huge pages (0 where that cannot be read)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
