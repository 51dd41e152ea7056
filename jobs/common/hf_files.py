"""Hugging Face model directories and their safetensors files, read and written without loading a tensor whole.

    from jobs.common.hf_files import check_transfer, tensor_shapes, read_header, header_bytes, StreamWriter
    check_transfer(trained_on_dir, target_dir)      # ValueError naming the first architecture/shape difference
    .venv/bin/python -m pytest tests/unit/test_merge.py tests/unit/test_export.py -q

Shared by the streaming merge (`jobs.export.merge`), the ZeRO-3 consolidation (`jobs.export.consolidate`), adapter
mixing (`jobs.export.mix`, through `jobs.common.lora_adapter`), FSDP consolidation (`jobs.train.fsdp_state`) and the
launcher, which calls `check_transfer` on the login node before it submits `launch export RUN --base OTHER`. So this
module imports no torch: dtypes are safetensors names ("BF16", "F32", ...) with their sizes in `ST_BYTES`; the torch
dtypes come from `torch_dtypes()`, and `StreamWriter.write`, which takes torch tensors, imports torch when called.

A safetensors file is an 8-byte little-endian header length, a JSON header of dtype/shape/data_offsets per tensor
(and an optional `__metadata__` of strings), then the raw little-endian data; `read_header` reads the header only
and checks that the offsets tile the file exactly, `header_bytes` writes one for tensors laid out in order.
A model directory holds `model.safetensors`, or `model-0000x-of-0000y.safetensors` + `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SINGLE_SHARD = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
NOT_4BIT = "merge into the original 16-bit weights, not the 4-bit base"

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "spiece.model", "vocab.txt", "chat_template.jinja", "chat_template.json",
)

# safetensors dtype names → bytes per element (torch_dtypes() has the same keys)
ST_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
DTYPE_ALIASES = {
    "bfloat16": "BF16", "bf16": "BF16", "float16": "F16", "fp16": "F16", "half": "F16",
    "float32": "F32", "fp32": "F32", "float": "F32",
}
HF_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_BNB_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format")
_BNB_PARTS = (".quant_state.", ".weight.quant_state")


# Config keys that hold a model's maximum sequence length (prompt and completion), by architecture family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def context_length(config: dict[str, Any]) -> int | None:
    """The longest sequence a model takes, from its config.json; None when the config does not say."""
    return next((int(config[key]) for key in CONTEXT_KEYS if key in config), None)


def torch_dtypes() -> dict[str, torch.dtype]:
    """safetensors dtype names → torch dtypes, for the modules that move tensor data (imports torch)."""
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
        "U8": torch.uint8, "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    }


def st_dtype(requested: str | None) -> str | None:
    if requested is None:
        return None
    name = DTYPE_ALIASES.get(str(requested).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"dtype {requested!r}: expected one of bfloat16, float16, float32 (never a 4-bit dtype)")
    return name


# ---------------------------------------------------------------------------------------------------------------
# safetensors, tensor by tensor


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file; `start`/`end` are absolute byte positions in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Shard:
    path: Path
    entries: tuple[Entry, ...]  # in file order
    metadata: dict[str, str] | None


def read_header(path: Path) -> Shard:
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its header length)")
        length = int.from_bytes(prefix, "little")
        if length > 512 << 20:
            raise ValueError(f"{path} is not a safetensors file (header length {length})")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a safetensors file: header is not JSON ({error})") from None
    size = path.stat().st_size
    data_start = 8 + length
    metadata = header.pop("__metadata__", None)
    entries = []
    for name, info in header.items():
        begin, end = info["data_offsets"]
        entries.append(Entry(name, info["dtype"], tuple(info["shape"]), data_start + begin, data_start + end))
    entries.sort(key=lambda entry: entry.start)
    position = data_start
    for entry in entries:
        itemsize = ST_BYTES.get(entry.dtype)
        if entry.start != position or (itemsize and entry.end - entry.start != entry.numel * itemsize):
            raise ValueError(f"{path}: tensor {entry.name} has inconsistent data offsets (a truncated file?)")
        position = entry.end
    if position != size:
        raise ValueError(f"{path}: header describes {position} bytes, the file has {size} (a truncated file?)")
    return Shard(path, tuple(entries), metadata)


def header_bytes(tensors: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str] | None) -> bytes:
    """The header for (name, dtype, shape, nbytes) tensors laid out in that order, padded to 8 bytes like
    safetensors itself."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class StreamWriter:
    """Writes tensors' bytes to a file, in order, from a background thread, so that writing one block overlaps
    reading and merging the next (both release the GIL). At most `depth` blocks wait; a write error is raised in
    the caller at its next write or at close."""

    def __init__(self, handle: BinaryIO, depth: int = 2) -> None:
        self._handle = handle
        self._queue: queue.Queue[torch.Tensor | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="merge-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:  # after an error, keep draining so that the caller never blocks
                try:
                    self._handle.write(memoryview(data.numpy()))
                except BaseException as error:  # noqa: BLE001 - re-raised in the caller
                    self._error = error

    def write(self, tensor: torch.Tensor) -> int:
        import torch

        if self._error is not None:
            raise self._error
        data = tensor.contiguous().reshape(-1).view(torch.uint8)
        self._queue.put(data)
        return data.numel()

    def close(self, raise_error: bool = True) -> None:
        self._queue.put(None)
        self._thread.join()
        if raise_error and self._error is not None:
            raise self._error


# ---------------------------------------------------------------------------------------------------------------
# model directories


def base_shards(base_dir: Path) -> tuple[list[str], dict[str, Any] | None]:
    """Shard file names in order, and the index json (None for a single model.safetensors)."""
    index_path = base_dir / SHARD_INDEX
    if index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        names = sorted(set(index.get("weight_map", {}).values()))
        if not names:
            raise ValueError(f"base {base_dir}: {SHARD_INDEX} has an empty weight_map")
        return names, index
    if (base_dir / SINGLE_SHARD).is_file():
        return [SINGLE_SHARD], None
    pickles = sorted(p.name for p in base_dir.glob("pytorch_model*.bin")) if base_dir.is_dir() else []
    hint = f" ({pickles[0]} is pickle: re-save the base with safetensors)" if pickles else ""
    raise ValueError(f"base {base_dir}: no {SINGLE_SHARD} or {SHARD_INDEX}{hint}")


def tensor_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a safetensors model directory, read from the shard headers only."""
    names, _ = base_shards(Path(model_dir))
    return {entry.name: entry.shape for name in names for entry in read_header(Path(model_dir) / name).entries}


def check_transfer(trained_on: Path, target: Path) -> None:
    """ValueError unless `target` has the architecture and every tensor shape of the base an adapter was trained on
    (the seed moved a StarCoder LoRA onto OctoCoder): the first difference is named."""
    configs = [json.loads((Path(d) / "config.json").read_text(encoding="utf-8")) if (Path(d) / "config.json").is_file()
               else {} for d in (trained_on, target)]
    check_config_not_quantized(target, configs[1])
    for key in ("model_type", "architectures"):
        if configs[0].get(key) != configs[1].get(key):
            raise ValueError(f"base {target} is {key} {configs[1].get(key)!r}, the adapter was trained on "
                             f"{configs[0].get(key)!r}: transfer needs the same architecture")
    theirs, ours = tensor_shapes(trained_on), tensor_shapes(target)
    for name, shape in theirs.items():
        if name not in ours:
            raise ValueError(f"base {target} has no tensor {name} (the adapter's base does): not the same architecture")
        if ours[name] != shape:
            raise ValueError(f"base {target}: {name} is {list(ours[name])}, {list(shape)} in the base the adapter was "
                             "trained on: transfer needs identical shapes")
    extra = next((name for name in ours if name not in theirs), None)
    if extra is not None:
        raise ValueError(f"base {target} has a tensor {extra} that the adapter's base lacks: not the same architecture")


def check_config_not_quantized(base_dir: Path, config: dict[str, Any]) -> None:
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        raise ValueError(f"base {base_dir}: config.json has a quantization_config ({method}): {NOT_4BIT}")


def check_not_quantized(base_dir: Path, config: dict[str, Any], shards: list[Shard]) -> None:
    check_config_not_quantized(base_dir, config)
    for shard in shards:
        for entry in shard.entries:
            if entry.name.endswith(_BNB_SUFFIXES) or any(part in entry.name for part in _BNB_PARTS):
                raise ValueError(f"base {base_dir}: {shard.path.name} holds bitsandbytes-quantized state "
                                 f"({entry.name}): {NOT_4BIT}")
