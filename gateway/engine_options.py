"""The names of llama.cpp's per-model load and context options, shared by the settings, the model registry and
the engine (which maps each name to llama.cpp's value), so a name the config accepts is one the engine knows.
A leaf: it imports nothing, so the config can validate without loading the engine."""

SPLIT_MODES = ("none", "layer", "row")
FLASH_ATTN_MODES = ("auto", "on", "off")
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")  # llama-server's -ctk/-ctv
QUANTIZED_CACHE_TYPES = frozenset(CACHE_TYPES) - {"f32", "f16", "bf16"}  # a quantized V cache needs flash attention
MAX_DEVICES = 16  # llama.cpp's LLAMA_MAX_DEVICES: the most GPUs a tensor_split can name
