"""The persistent prompt cache: long prompt prefixes' KV state in files, so that they survive a restart, a
reload or an unload of the model.

A runner saves a prefix with llama.cpp's per-sequence state (`llama_state_seq_get_data`) and restores it into
a sequence (`llama_state_seq_set_data`) when a later prompt starts with it and the in-memory prefix cache does
not already hold it. Which prefix is saved is the caller's choice (`GenerationJob.cache_prefix`: the end of a
chat's first message, or a warmed prompt); this module keeps the files.

One file per prefix, named `<model key>-<prefix key>.kvc` (the model key hashes the model file's path, the
prefix key the token ids), laid out as

    header   "<8s32sIQI": magic, model identity (sha256), token count, state size, crc32 of tokens + state
    tokens   int32 each
    state    what llama_state_seq_get_data wrote

The identity covers the model file (path, size, mtime) and the llama.cpp build, whose state format may change.
A file is checked before llama.cpp ever sees it: exact length, identity, the tokens themselves (a hash collision
of the key is caught there) and the checksum; llama.cpp may abort on a truncated state. A file that fails is
removed, never fatal.

Costs, measured on the 2-core VM with SmolLM2-135M (23 KB of KV per token) for a 2,000-token prefix (46 MB),
while other tests loaded the machine: copying the state out on the decode thread took 5.1-5.2 ms into a buffer
whose pages were already faulted in, 32-34 ms into a fresh one (page faults), so the writer thread prepares one
while the prefix is still being prefilled (at most one such buffer is kept, and a save hands it to the writer,
which frees it once written); writing and fsyncing it, on the writer thread, ~125 ms. A restore on
the decode thread maps the file, checks its crc32 and hands it to llama.cpp: 21-27 ms (the crc32 11-16, the copy
into the KV cache 5), against 8.7 s to prefill those 2,000 tokens. The restore is not moved off the decode
thread because it happens once per prefix after a restart, and a stall of one or two decode steps is the price.

The folder is bounded by `max_bytes` over every model's files: after each save the least recently used files
go, where "used" is the file's mtime, which a restore refreshes (access times are unreliable on `relatime` and
`noatime` mounts). Files are written to a temporary name, fsynced and renamed, so a crash or a full disk never
leaves a half-written file under a real name; leftovers of dead processes are removed at start.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import hashlib
import logging
import mmap
import os
import queue
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Callable

import llama_cpp

log = logging.getLogger("gateway.engine.prompt_store")

MAGIC = b"LGWKVC01"
HEADER = struct.Struct("<8s32sIQI")
SUFFIX = ".kvc"
TOKEN = array.array("i").itemsize  # 4: llama_token is int32
MAX_PENDING = 2  # prefixes copied out and waiting for the writer; more are skipped (their memory adds up)


@dataclass(frozen=True)
class PromptCacheSettings:
    dir: str  # "" = off
    min_tokens: int = 512
    max_bytes: int = 4 * 2**30


@dataclass
class Entry:
    n_tokens: int
    path: str


def token_bytes(tokens: list[int] | array.array) -> bytes:
    return (tokens if isinstance(tokens, array.array) else array.array("i", tokens)).tobytes()


def prefix_key(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def model_identity(path: str) -> tuple[str, bytes]:
    """(model key, identity): the key names the model's files, the identity says whether a file still fits it."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = hashlib.sha256(real.encode()).hexdigest()[:16]
    identity = hashlib.sha256(f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{llama_cpp.__version__}".encode()).digest()
    return key, identity


def encode_header(identity: bytes, tokens: bytes, state: bytes | memoryview) -> bytes:
    crc = zlib.crc32(state, zlib.crc32(tokens))
    return HEADER.pack(MAGIC, identity, len(tokens) // TOKEN, len(state), crc)


def write_file(folder: str, stem: str, identity: bytes, tokens: bytes, state: bytes | memoryview) -> str:
    """Write one cache file under a temporary name, fsync it and rename it into place; on any OSError (a full
    disk, a read-only folder) the temporary file is removed, so nothing half-written is ever left behind."""
    path = os.path.join(folder, stem + SUFFIX)
    temp = os.path.join(folder, f".{stem}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(encode_header(identity, tokens, state))
            f.write(tokens)
            f.write(state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return path


class BadFile(Exception):
    """A cache file that must not reach llama.cpp; the message says why."""


def check_file(data: memoryview | bytes, identity: bytes, size: int) -> tuple[int, int]:
    """Validate a whole file's bytes (without the checksum, see `check_sum`); returns (token count, state size)."""
    if size < HEADER.size:
        raise BadFile(f"{size} bytes, shorter than the header")
    magic, ident, n_tokens, state_size, _ = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise BadFile("not a prompt cache file")
    if ident != identity:
        raise BadFile("written for another model file or llama.cpp build")
    expected = HEADER.size + n_tokens * TOKEN + state_size
    if size != expected:
        raise BadFile(f"{size} bytes where its header promises {expected}")
    return n_tokens, state_size


def check_sum(data: memoryview | bytes) -> None:
    *_, crc = HEADER.unpack_from(data, 0)
    if zlib.crc32(memoryview(data)[HEADER.size:]) != crc:
        raise BadFile("checksum mismatch")


class PromptStore:
    """One runner's view of the cache folder. Lookups, restores and copies run on the executor's thread; the
    writer thread writes, evicts and prepares buffers. `stats()` is what the runner reports to the API process."""

    def __init__(self, settings: PromptCacheSettings, model_path: str, bytes_per_token: int,
                 wake: Callable[[], None] = lambda: None):
        self.settings = settings
        self.dir = settings.dir
        self.key, self.identity = model_identity(model_path)
        self._bytes_per_token = bytes_per_token  # an estimate, to prepare buffers before the state exists
        self._wake = wake  # tells the executor that stats changed, so the runner sends them
        self._lock = threading.Lock()  # the index, the stats and the spare buffer: writer vs executor thread
        self._index: dict[str, Entry] = {}
        self._pending: set[str] = set()
        self._spare: mmap.mmap | None = None
        self._counts = {"hits": 0, "misses": 0, "restored_tokens": 0, "saves": 0, "save_errors": 0, "skipped": 0,
                        "removed": 0}
        self._bytes = 0
        self.version = 0
        os.makedirs(self.dir, exist_ok=True)
        self._scan()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="prompt-cache-writer", daemon=True)
        self._writer.start()

    # -- the executor's thread -----------------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._index), "bytes": self._bytes, **self._counts}

    def has(self, tokens: list[int]) -> bool:
        key = prefix_key(token_bytes(tokens))
        with self._lock:
            return key in self._index or key in self._pending

    def restore(self, ctx, seq_id: int, prompt: list[int], have: int, min_gain: int) -> int:
        """Replace what sequence `seq_id` holds with the longest saved prefix of `prompt` that is longer than
        `have` (what the in-memory cache offers) by `min_gain` tokens at least; returns its length, 0 when there is
        none (the sequence is then untouched, unless llama.cpp refused the state: then it is empty). A long
        prompt that neither memory nor disk had a long prefix of counts as a miss."""
        if len(prompt) <= self.settings.min_tokens:
            return 0
        packed = memoryview(token_bytes(prompt))
        with self._lock:
            lengths = sorted({e.n_tokens for e in self._index.values()}, reverse=True)
        for n in lengths:
            if n >= len(prompt) or n < have + min_gain:  # at least one prompt token is left to evaluate
                continue
            key = prefix_key(packed[:n * TOKEN])
            with self._lock:
                entry = self._index.get(key)
            if entry is not None and self._load(key, entry, ctx, seq_id, packed[:n * TOKEN]):
                self._count(hits=1, restored_tokens=n)
                return n
        if have < self.settings.min_tokens:
            self._count(misses=1)
        return 0

    def _load(self, key: str, entry: Entry, ctx, seq_id: int, expected: memoryview) -> bool:
        try:
            with open(entry.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER.size:
                    raise BadFile(f"{size} bytes, shorter than the header")
                mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except FileNotFoundError:  # evicted by another runner
            self._forget(key)
            return False
        except (OSError, BadFile) as exc:
            self._discard(key, entry.path, str(exc))
            return False
        try:
            view = memoryview(mapped)
            try:
                n_tokens, state_size = check_file(view, self.identity, size)
                if view[HEADER.size:HEADER.size + n_tokens * TOKEN] != expected:
                    raise BadFile("its tokens differ from the prefix its name promises")
                check_sum(view)
                start = HEADER.size + n_tokens * TOKEN
                state = (ctypes.c_uint8 * state_size).from_buffer(mapped, start)
                llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq_id, -1, -1)
                read = llama_cpp.llama_state_seq_set_data(ctx, state, state_size, seq_id)
                del state
                if read != state_size:
                    raise BadFile(f"llama.cpp refused the state ({read} of {state_size} bytes read)")
            finally:
                view.release()
        except BadFile as exc:
            self._discard(key, entry.path, str(exc))
            return False
        finally:
            mapped.close()
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # most recently used: eviction takes the others first
        return True

    def plan(self, n_tokens: int) -> None:
        """A prefix of `n_tokens` will be copied out when its prefill reaches it: prepare a buffer meanwhile."""
        self._jobs.put(("prepare", n_tokens * self._bytes_per_token + 65536))

    def wanted(self, tokens: list[int]) -> bool:
        """Whether saving this prefix is worth it: long enough, small enough for the folder, not saved yet."""
        if self.settings.min_tokens > len(tokens) or len(tokens) * self._bytes_per_token > self.settings.max_bytes:
            return False
        return not self.has(tokens)

    def save(self, ctx, seq_id: int, tokens: list[int]) -> bool:
        """Copy sequence `seq_id`'s state (which holds exactly `tokens`) and queue it for writing. Runs between
        two decode steps: a memory copy into a prepared buffer (see the module's docstring for its cost)."""
        key = prefix_key(token_bytes(tokens))
        with self._lock:
            if key in self._index or key in self._pending:
                return True
            if len(self._pending) >= MAX_PENDING:
                self._counts["skipped"] += 1
                return False
            self._pending.add(key)
            spare, self._spare = self._spare, None
        size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
        if spare is None or len(spare) < size:
            if spare is not None:
                spare.close()
            spare = _buffer(size)
        state = (ctypes.c_uint8 * size).from_buffer(spare)
        written = llama_cpp.llama_state_seq_get_data(ctx, state, size, seq_id)
        del state
        self._jobs.put(("write", (key, token_bytes(tokens), spare, written)))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Finish the writes already queued (a stopping runner keeps what it copied), then stop the writer."""
        self._jobs.put(("stop", None))
        self._writer.join(timeout)

    # -- the writer thread -----------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            kind, payload = self._jobs.get()
            if kind == "stop":
                return
            try:
                if kind == "prepare":
                    self._prepare(payload)
                elif kind == "write":
                    self._write(*payload)
            except Exception:  # the cache is an optimisation: it must never take the runner down
                log.exception("prompt cache: %s failed", kind)

    def _prepare(self, size: int) -> None:
        with self._lock:
            if self._spare is not None and len(self._spare) >= size:
                return
        spare = _buffer(size)  # pages faulted in here, off the decode thread
        with self._lock:
            old, self._spare = self._spare, spare
        if old is not None:
            old.close()

    def _write(self, key: str, tokens: bytes, buffer: mmap.mmap, size: int) -> None:
        state = memoryview(buffer)[:size]
        try:
            path = write_file(self.dir, f"{self.key}-{key}", self.identity, tokens, state)
        except OSError as exc:
            log.warning("prompt cache: could not save a prefix of %d tokens: %s", len(tokens) // TOKEN, exc)
            self._finish_write(key, None, "save_errors")
            return
        finally:
            state.release()
            buffer.close()
        self._finish_write(key, Entry(len(tokens) // TOKEN, path), "saves")
        self._evict()

    def _finish_write(self, key: str, entry: Entry | None, counter: str) -> None:
        with self._lock:
            self._pending.discard(key)
            if entry is not None:
                self._index[key] = entry
            self._counts[counter] += 1
        self._changed()

    def _evict(self) -> None:
        """Remove the least recently used files (of every model) until the folder fits `max_bytes`."""
        files = []
        for name in os.listdir(self.dir):
            if name.endswith(SUFFIX):
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(self.dir, name))
                    files.append((st.st_mtime_ns, st.st_size, name))
        total = sum(size for _, size, _ in files)
        for _, size, name in sorted(files):
            if total <= self.settings.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, name))
            total -= size
            if name.startswith(self.key + "-"):
                self._forget(name[len(self.key) + 1:-len(SUFFIX)])
        self._recount()

    # -- shared --------------------------------------------------------------------------------------------

    def _scan(self) -> None:
        """Index this model's files (their headers and tokens only), remove what cannot serve it any more, and
        clear temporary files of processes that died mid-write."""
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if name.startswith(".") and name.endswith(".tmp"):
                _remove_orphan(path, name)
            elif name.startswith(self.key + "-") and name.endswith(SUFFIX):
                key = name[len(self.key) + 1:-len(SUFFIX)]
                try:
                    with open(path, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        head = f.read(HEADER.size)
                        n_tokens, _ = check_file(head, self.identity, size)
                        tokens = f.read(n_tokens * TOKEN)
                    if prefix_key(tokens) != key:
                        raise BadFile("its tokens differ from the prefix its name promises")
                except (OSError, BadFile, struct.error) as exc:
                    self._discard(key, path, str(exc))
                    continue
                self._index[key] = Entry(n_tokens, path)
        self._recount()
        log.info("prompt cache: %d saved prefixes for this model in %s", len(self._index), self.dir)

    def _recount(self) -> None:
        total = 0
        with self._lock:
            entries = list(self._index.values())
        for entry in entries:
            with contextlib.suppress(OSError):
                total += os.path.getsize(entry.path)
        with self._lock:
            self._bytes = total
        self._changed()

    def _discard(self, key: str, path: str, why: str) -> None:
        log.warning("prompt cache: removed %s: %s", os.path.basename(path), why)
        with contextlib.suppress(OSError):
            os.unlink(path)
        self._forget(key)
        self._count(removed=1)
        self._recount()

    def _forget(self, key: str) -> None:
        with self._lock:
            self._index.pop(key, None)

    def _count(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counts[name] += amount
        self._changed()

    def _changed(self) -> None:
        with self._lock:
            self.version += 1
        self._wake()


def _buffer(size: int) -> mmap.mmap:
    """Anonymous memory with its pages already faulted in (MAP_POPULATE; the GIL is released meanwhile)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(-1, max(size, 1), flags=flags)


def _remove_orphan(path: str, name: str) -> None:
    """`.<key>.<pid>.tmp`: removed when the process that was writing it is gone."""
    try:
        pid = int(name.rsplit(".", 2)[-2])
        os.kill(pid, 0)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            os.unlink(path)
    except (ValueError, IndexError, PermissionError):
        return
