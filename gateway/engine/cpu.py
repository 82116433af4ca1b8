"""What this CPU offers llama.cpp, and whether weights may be repacked for it.

llama.cpp repacks weights at load into CPU-specific buffer types ("extra buffer types"). On CPUs that report
AMX, the AMX repack crashes the process with SIGSEGV in its first prefill on some machines and VMs (llama.cpp
issue #20824, open as of 0.3.36), so there the default is to load without repacking (`use_extra_bufts = false`,
llama-server's `--no-repack`). A model's `repack: true` turns it back on.
"""

from __future__ import annotations

from dataclasses import dataclass

CPUINFO = "/proc/cpuinfo"
REPORTED = ("avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "f16c",
            "fma", "neon", "asimd", "sve")


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    flags: frozenset[str]

    @property
    def amx(self) -> bool:
        return any(flag.startswith("amx") for flag in self.flags)

    def default_repack(self) -> bool:
        """Repack weights unless the CPU has AMX (llama.cpp #20824)."""
        return not self.amx

    def describe(self) -> str:
        shown = [flag for flag in REPORTED if flag in self.flags]
        why = "off by default: AMX repacking crashes (llama.cpp #20824)" if self.amx else "on by default"
        return f"CPU {self.model or 'unknown'}; features {' '.join(shown) or 'none of note'}; weight repacking {why}"


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The first processor's model name and flags (x86 `flags`, ARM `Features`) from /proc/cpuinfo's text."""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value
    return CpuFeatures(model, frozenset(flags.split()))


def cpu_features(path: str = CPUINFO) -> CpuFeatures:
    try:
        with open(path) as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return CpuFeatures("", frozenset())


def resolve_repack(setting: bool | None, cpu: CpuFeatures | None = None) -> bool:
    """A model's `repack` setting if given, else this CPU's default."""
    if setting is not None:
        return setting
    return (cpu or cpu_features()).default_repack()
