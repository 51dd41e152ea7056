"""Run an exported GGUF in llama.cpp itself, on CPU: its tokenizer, its logits, its greedy completion.

This is how the GGUF export is checked against the transformers model it came from (tests/integration/
test_llama_cpp.py, bench/llama_cpp_parity.py), and how a user tries a run's GGUF without building llama.cpp:

    from jobs.export.llama_cpp import LlamaCpp
    with LlamaCpp(Path("runs/r1/export/v1/gguf/r1-q8_0.gguf")) as model:
        ids = model.tokenize("def add(a, b):\\n")
        print(model.detokenize(model.greedy(ids, 32)))

The library is llama.cpp's CPU build as a compiled Python extension, taken from a pinned wheel on the package index
by tools/install_llama_cpp.py (`make setup` runs it) into `<venv>/llama-cpp/`, or from the directory named by
$CLUSTERFT_LLAMA_CPP. Only that one extension module is loaded, not the wheel's Python package (which would pull in
its own transformers). One thread by default, so figures are comparable with a 1-thread transformers run.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

LIBRARY_ENV = "CLUSTERFT_LLAMA_CPP"
MODULE_NAME = "llama._llama_cpp_cpu"  # the name the extension was compiled under (its PyInit symbol)
INSTALL_HINT = "run `make setup` or `.venv/bin/python tools/install_llama_cpp.py`"


class LlamaCppMissing(RuntimeError):
    """llama.cpp's CPU extension is not installed where we look."""


def library_dir() -> Path:
    return Path(os.environ.get(LIBRARY_ENV) or Path(sys.prefix) / "llama-cpp")


def load_library() -> ModuleType:
    """The compiled extension (its `ffi` and `lib`), loaded once per process."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    found = sorted(library_dir().glob("_llama_cpp_cpu*.so"))
    if not found:
        raise LlamaCppMissing(f"no llama.cpp CPU library in {library_dir()} (${LIBRARY_ENV}): {INSTALL_HINT}")
    loader = importlib.machinery.ExtensionFileLoader(MODULE_NAME, str(found[0]))
    spec = importlib.util.spec_from_file_location(MODULE_NAME, found[0], loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[MODULE_NAME] = module
    _silence(module)
    module.lib.llama_backend_init()
    return module


def _silence(module: ModuleType) -> None:
    """llama.cpp logs every tensor it loads to stderr; keep errors only (the callback must outlive the process)."""
    ffi, lib = module.ffi, module.lib

    @ffi.callback("void(enum ggml_log_level, char *, void *)")
    def log(level: int, text: Any, _: Any) -> None:
        if level == lib.GGML_LOG_LEVEL_ERROR:
            sys.stderr.write(ffi.string(text).decode("utf-8", "replace"))

    module.log_callback = log
    lib.llama_log_set(log, ffi.NULL)


class LlamaCpp:
    """One GGUF model and one context of `context` tokens; use as a context manager (frees the C side)."""

    def __init__(self, gguf_path: Path, context: int = 1024, threads: int = 1) -> None:
        module = load_library()
        self._ffi, self._lib = module.ffi, module.lib
        self.context = context
        self._model = self._lib.llama_model_load_from_file(str(gguf_path).encode(),
                                                           self._lib.llama_model_default_params())
        if self._model == self._ffi.NULL:
            raise ValueError(f"{gguf_path}: llama.cpp could not load this GGUF")
        params = self._lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = context
        params.n_threads = params.n_threads_batch = threads
        self._context = self._lib.llama_init_from_model(self._model, params)
        if self._context == self._ffi.NULL:
            self._lib.llama_model_free(self._model)
            raise ValueError(f"{gguf_path}: llama.cpp could not make a {context}-token context")
        self._vocab = self._lib.llama_model_get_vocab(self._model)
        self.vocab_size = self._lib.llama_vocab_n_tokens(self._vocab)
        self.eos = self._lib.llama_vocab_eos(self._vocab)

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._context is not None:
            self._lib.llama_free(self._context)
            self._lib.llama_model_free(self._model)
            self._context = self._model = None

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization; special tokens (`<fim_prefix>`...) are parsed, no BOS is added."""
        data = text.encode("utf-8")
        room = len(data) + 8
        buffer = self._ffi.new("int32_t[]", room)
        count = self._lib.llama_tokenize(self._vocab, data, len(data), buffer, room, False, True)
        return list(buffer[0:count])

    def detokenize(self, ids: list[int]) -> str:
        pieces = bytearray()
        buffer = self._ffi.new("char[]", 256)
        for token in ids:
            size = self._lib.llama_token_to_piece(self._vocab, token, buffer, 256, 0, True)
            pieces += self._ffi.buffer(buffer, size)[:]
        return pieces.decode("utf-8", "replace")

    def logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of `ids` (teacher-forced, one batch): shape (len(ids), vocab)."""
        self._check_length(len(ids))
        self._lib.llama_kv_cache_clear(self._context)
        batch = self._lib.llama_batch_init(len(ids), 0, 1)
        try:
            batch.n_tokens = len(ids)
            for position, token in enumerate(ids):
                batch.token[position], batch.pos[position] = token, position
                batch.n_seq_id[position], batch.seq_id[position][0], batch.logits[position] = 1, 0, 1
            self._decode(batch)
            return np.stack([self._row(position) for position in range(len(ids))])
        finally:
            self._lib.llama_batch_free(batch)

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """The argmax completion of `ids`, up to `max_new_tokens` or the end-of-text token (not included)."""
        self._check_length(len(ids) + max_new_tokens)
        self._lib.llama_kv_cache_clear(self._context)
        tokens = self._ffi.new("int32_t[]", ids)
        self._decode(self._lib.llama_batch_get_one(tokens, len(ids)))
        completion: list[int] = []
        while len(completion) < max_new_tokens:
            token = int(self._row(-1).argmax())
            if token == self.eos:
                break
            completion.append(token)
            tokens = self._ffi.new("int32_t[]", [token])
            self._decode(self._lib.llama_batch_get_one(tokens, 1))
        return completion

    def _check_length(self, length: int) -> None:
        if length > self.context:
            raise ValueError(f"{length} tokens do not fit the {self.context}-token llama.cpp context")

    def _decode(self, batch: Any) -> None:
        code = self._lib.llama_decode(self._context, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def _row(self, index: int) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self._context, index)
        return np.frombuffer(self._ffi.buffer(pointer, self.vocab_size * 4), dtype=np.float32).copy()
