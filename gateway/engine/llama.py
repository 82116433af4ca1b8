"""A loaded GGUF model and what every thread may ask of it: the vocabulary, tokenizing, token text.

llama-cpp-python's low-level bindings are thin ctypes wrappers; this module keeps the pointer juggling in one
place. Decoding contexts are owned by the executor thread; the model and vocabulary are read-only after loading
and safe to use from HTTP threads (tokenizing, detokenizing).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import llama_cpp

from gateway.engine.fragment_tokens import (
    ATTR_CONTROL,
    ATTR_UNKNOWN,
    ATTR_USER_DEFINED,
    FragmentTokenizer,
    Special,
)

log = logging.getLogger("gateway.engine")

SPLIT_MODES = {"none": 0, "layer": 1, "row": 2, "tensor": 3}
FLASH_ATTN = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}
# KV cache element types llama-server accepts (--cache-type-k/-v): ggml type id and bytes per element.
CACHE_TYPES = {"f32": (0, 4.0), "f16": (1, 2.0), "bf16": (30, 2.0), "q8_0": (8, 34 / 32), "q4_0": (2, 18 / 32),
               "q4_1": (3, 20 / 32), "q5_0": (6, 22 / 32), "q5_1": (7, 24 / 32), "iq4_nl": (20, 18 / 32)}
DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}  # enum ggml_backend_dev_type

_backend_lock = threading.Lock()
_backend_ready = False
_log_callback = None  # kept referenced: llama.cpp calls it from C for the process lifetime


def _route_llama_log(level: int, text: bytes, _user_data) -> None:
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:  # ggml levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation
        log.log({3: logging.WARNING, 4: logging.ERROR}.get(level, logging.DEBUG), "llama.cpp: %s", message)


def init_backend() -> None:
    """Initialise llama.cpp once per process and send its log through Python logging (it prints otherwise)."""
    global _backend_ready, _log_callback
    with _backend_lock:
        if _backend_ready:
            return
        _log_callback = llama_cpp.llama_log_callback(_route_llama_log)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


def physical_cores() -> int:
    """The number of physical cores this process may use: llama.cpp decodes fastest with one thread per core."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = core = ""
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and core:
                    cores.add((phys, core))
                    phys = core = ""
            if core:
                cores.add((phys, core))
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def supports_gpu_offload() -> bool:
    init_backend()
    return bool(llama_cpp.llama_supports_gpu_offload())


@dataclass(frozen=True)
class Device:
    """A device llama.cpp can compute on, as ggml's backend registry lists it."""

    name: str
    description: str
    type: str  # cpu, gpu, igpu, accel
    memory_free: int
    memory_total: int


def devices() -> list[Device]:
    """Every device this build of llama.cpp sees (CUDA GPUs, Metal, Vulkan..., and the CPU). The Python bindings
    do not wrap ggml's device registry, so it is read from libggml directly."""
    init_backend()
    lib = _ggml()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(Device((lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                          (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                          DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "other"), free.value, total.value))
    return out


def check_tensor_split(split: list[float] | None, where: str) -> None:
    """A tensor_split names one share per GPU: more shares than llama.cpp sees GPUs is a mistake worth refusing
    (ValueError) before a load; on a build that cannot offload it is only ignored, and the log says so."""
    if not split:
        return
    if not supports_gpu_offload():
        log.warning("%s: tensor_split %s is ignored: this llama.cpp build cannot offload to a GPU", where, split)
        return
    gpus = [d.name for d in devices() if d.type in ("gpu", "igpu")]
    if len(split) > len(gpus):
        raise ValueError(f"{where}: tensor_split has {len(split)} shares but llama.cpp sees {len(gpus)} GPU(s)"
                         f"{': ' + ', '.join(gpus) if gpus else ''}")


_ggml_lib = None


def _ggml():
    global _ggml_lib
    if _ggml_lib is None:
        base = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        names = [n for n in ("libggml.so", "libggml.dylib", "ggml.dll") if os.path.exists(os.path.join(base, n))]
        lib = ctypes.CDLL(os.path.join(base, names[0]) if names else "libggml.so")
        lib.ggml_backend_dev_count.restype = ctypes.c_size_t
        lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_dev_get.restype = ctypes.c_void_p
        for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
            fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_char_p
        lib.ggml_backend_dev_type.argtypes, lib.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
        lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                                ctypes.POINTER(ctypes.c_size_t)]
        _ggml_lib = lib
    return _ggml_lib


@dataclass(frozen=True)
class ContextParams:
    """How a model's decoding context is built: attention kernel, KV cache element types and LoRA adapters
    (file, scale). Fixed for the life of the loaded model, like `LoadParams`."""

    flash_attn: str = "auto"  # auto, on, off
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    lora: tuple[tuple[str, float], ...] = ()


@dataclass
class LoadParams:
    """How a model is loaded; fixed for the life of the loaded model (requests never change these)."""

    n_gpu_layers: int = 0
    split_mode: str = "layer"
    main_gpu: int = 0
    tensor_split: list[float] | None = None
    huge_pages: bool = False  # weights read into memory on huge pages instead of mapped (engine/huge_pages.py)
    repack: bool = True  # llama.cpp's extra buffer types (weights repacked for the CPU); see engine/cpu.py
    vocab_only: bool = False  # the API process's copy: templates and tokens, no weights
    extra: dict = field(default_factory=dict)


def model_params(params: LoadParams):
    """llama.cpp's model parameters for `params`, and the tensor split array they point to (None without one)."""
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = params.n_gpu_layers
    mp.split_mode = SPLIT_MODES[params.split_mode]
    mp.main_gpu = params.main_gpu
    mp.use_extra_bufts = params.repack
    if params.huge_pages:  # read into memory that can be on huge pages, not mapped from the file
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    mp.vocab_only = params.vocab_only
    split = None
    if params.tensor_split:
        n_dev = llama_cpp.llama_max_devices()
        values = list(params.tensor_split)[:n_dev] + [0.0] * max(0, n_dev - len(params.tensor_split))
        split = (ctypes.c_float * n_dev)(*values)  # llama.cpp copies it at load
        mp.tensor_split = split
    return mp, split


class LlamaModel:
    """A GGUF model's weights and vocabulary."""

    def __init__(self, path: str, params: LoadParams):
        init_backend()
        mp, self._tensor_split = model_params(params)  # the split array must outlive the load call
        self.ptr = llama_cpp.llama_model_load_from_file(path.encode(), mp)
        if not self.ptr:
            raise RuntimeError(f"llama.cpp could not load the model file {path}")
        self.path = path
        self._lora: dict[str, object] = {}
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.ptr)
        self.n_embd = llama_cpp.llama_model_n_embd(self.ptr)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.pieces = [self._piece(t, special=False) for t in range(self.n_vocab)]
        self.eog = frozenset(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t))
        # Control tokens render as nothing in `pieces`; their text is here for skip_special_tokens=False.
        self.control = {t: self._piece(t, special=True) for t in range(self.n_vocab)
                        if llama_cpp.llama_vocab_is_control(self.vocab, t)}
        fim = (llama_cpp.llama_vocab_fim_pre(self.vocab), llama_cpp.llama_vocab_fim_suf(self.vocab),
               llama_cpp.llama_vocab_fim_mid(self.vocab))
        self.fim: tuple[int, int, int] | None = fim if min(fim) >= 0 else None
        self.bos_text = self._special_text(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_text = self._special_text(llama_cpp.llama_vocab_eos(self.vocab))
        self.fragments = self._fragment_tokenizer()

    def _fragment_tokenizer(self) -> FragmentTokenizer | None:
        """Kept tokens of the text between special tokens, where the split can be done exactly as llama.cpp's."""
        vocab = self.vocab
        specials = []
        for token in range(self.n_vocab):
            attr = llama_cpp.llama_vocab_get_attr(vocab, token)
            if attr & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN):
                specials.append(Special(llama_cpp.llama_vocab_get_text(vocab, token) or b"", token, attr))
        bos, eos = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab)
        return FragmentTokenizer.for_vocab(
            llama_cpp.llama_vocab_type(vocab), specials, bos if llama_cpp.llama_vocab_get_add_bos(vocab) else None,
            eos if llama_cpp.llama_vocab_get_add_eos(vocab) else None,
            lambda piece: self._tokenize(piece, False, False))

    def _piece(self, token: int, special: bool) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.pieces[token].decode("utf-8", errors="replace")

    def token_texts(self, tokens: list[int]) -> TokenTexts:
        return TokenTexts(self, tokens)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        if self.fragments is not None:
            return self.fragments.tokenize(data, add_special, parse_special)
        return self._tokenize(data, add_special, parse_special)

    def _tokenize(self, data: bytes, add_special: bool, parse_special: bool) -> list[int]:
        """llama.cpp's own call."""
        size = len(data) + 8
        while True:
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.pieces[t] for t in tokens if 0 <= t < self.n_vocab).decode("utf-8", errors="replace")

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def apply_lora(self, ctx, adapters: tuple[tuple[str, float], ...]) -> None:
        """Load each adapter once per model (llama.cpp frees them with the model) and set them on `ctx`."""
        loaded = []
        for path, _scale in adapters:
            if path not in self._lora:
                ptr = llama_cpp.llama_adapter_lora_init(self.ptr, path.encode())
                if not ptr:
                    raise RuntimeError(f"llama.cpp could not load the LoRA adapter {path} for {self.path}")
                self._lora[path] = ptr
            loaded.append(self._lora[path])
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(loaded))(*loaded)
        scales = (ctypes.c_float * len(loaded))(*(scale for _path, scale in adapters))
        if llama_cpp.llama_set_adapters_lora(ctx, arr, len(loaded), scales) != 0:
            raise RuntimeError(f"llama.cpp refused the LoRA adapters for {self.path}")

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None


def context_params(n_ctx: int, n_batch: int, n_seq_max: int, n_threads: int, embeddings: bool = False,
                   pooling: int = -1, extra: ContextParams = ContextParams()):
    """llama.cpp's context parameters (a seam that tests read on this CPU-only machine)."""
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = n_batch
    cp.n_ubatch = n_batch if embeddings else min(n_batch, 512)
    cp.n_seq_max = n_seq_max
    cp.n_threads = n_threads
    cp.n_threads_batch = n_threads
    cp.kv_unified = True
    cp.no_perf = True
    cp.embeddings = embeddings
    cp.pooling_type = pooling
    cp.flash_attn_type = FLASH_ATTN[extra.flash_attn]
    cp.type_k = CACHE_TYPES[extra.cache_type_k][0]
    cp.type_v = CACHE_TYPES[extra.cache_type_v][0]
    return cp


def new_context(model: LlamaModel, n_ctx: int, n_batch: int, n_seq_max: int, n_threads: int,
                embeddings: bool = False, pooling: int = -1, extra: ContextParams = ContextParams()):
    """A llama context with `extra`'s LoRA adapters applied; the caller's thread becomes its only user."""
    cp = context_params(n_ctx, n_batch, n_seq_max, n_threads, embeddings, pooling, extra)
    ctx = llama_cpp.llama_init_from_model(model.ptr, cp)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} tokens for {model.path}")
    if extra.lora:
        model.apply_lora(ctx, extra.lora)
    return ctx


class TokenTexts(Sequence):
    """Each token's text, made when read: only the vLLM and TGI tokenize routes read them, and making them for
    every count costs a count of a short chat a sixth of its CPU."""

    def __init__(self, model: LlamaModel, tokens: list[int]) -> None:
        self._model, self._tokens = model, tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._model.token_text(t) for t in self._tokens[index]]
        return self._model.token_text(self._tokens[index])
