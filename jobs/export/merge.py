"""Merge a LoRA/QLoRA adapter into its base model, streaming shard by shard, into the base's 16-bit (or fp32) weights.

    merge_adapter(base_dir, adapter_dir, out_dir, weight=1.0, dtype=None) -> MergeReport
    python -m jobs.export.merge BASE_DIR ADAPTER_DIR OUT_DIR [--weight 0.8] [--dtype bfloat16]

`base_dir` is a Hugging Face model directory with safetensors weights (`model.safetensors`, or
`model-0000x-of-0000y.safetensors` + `model.safetensors.index.json`); `adapter_dir` a PEFT LoRA adapter
(`adapter_config.json` + `adapter_model.safetensors`). For every base tensor a LoRA module targets,

    W ← W + weight · s · (B @ A)      s = lora_alpha / r  (lora_alpha / √r with use_rslora; rank/alpha_pattern honoured)

computed in float32 (float64 for an F64 base) and cast back to the tensor's dtype once — W is stored [out, in]
(nn.Linear), or [in, out] when the adapter says fan_in_fan_out (GPT-2's Conv1D) and for embeddings, where PEFT's
delta is (B @ A)ᵀ. Tensors the adapter saves whole (trained biases with bias="all"/"lora_only", modules_to_save,
embedding layers PEFT saved) replace the base tensor — interpolated as W₀ + weight·(W₁ − W₀) when weight ≠ 1.

Streaming: the output shards keep the base's names, tensor order, index json and safetensors metadata. Each shard
is read and written tensor by tensor — tensors that do not change are copied in 16 MiB pieces, changed ones are
merged in row blocks of at most 16 MiB of float32, and a background thread writes one block while the next is
read and merged — so peak memory is the adapter plus a few such blocks, whatever the shard or tensor size (16 MiB:
smaller blocks measured slower, larger ones no faster). The shard is read with plain reads rather than through a
memory map (safe_open): pages of a mapped file count towards the process's resident set for as long as the map is
open, which would put a whole shard back into the peak. The safetensors format (an 8-byte little-endian header
length, a JSON header of dtype/shape/data_offsets and `__metadata__`, then the raw little-endian data) is read and
written here directly so that a tensor never has to be whole in memory; the result is checked by `safetensors` and
`from_pretrained` in the tests.

Never into 4-bit weights: a base whose config.json has a `quantization_config`, or whose shards hold bitsandbytes
state (`.absmax`, `.quant_map`, `.quant_state.*`, `.SCB`), is refused — merge into the original 16-bit weights,
not the 4-bit base a QLoRA run trained on. Refused too, each with one line (ValueError) and before anything is
written: other adapter types and LoRA variants (DoRA, lora_bias, aLoRA, ...), adapters whose initialisation
rewrote the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA — convert them to plain LoRA first), a LoRA on an
input embedding the base ties to its output head, an adapter module not found in any shard (the first one is
named), and an `out_dir` that exists. The output is written to a hidden sibling directory and renamed into place
at the end, so `out_dir` is either complete or absent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SINGLE_SHARD = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PEFT_PREFIX = "base_model.model."
NOT_4BIT = "merge into the original 16-bit weights, not the 4-bit base"

COPY_CHUNK_BYTES = 16 << 20  # unchanged tensors are copied in pieces of this size
BLOCK_BYTES = 16 << 20  # merged tensors are computed in row blocks of at most this many float32 bytes

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "spiece.model", "vocab.txt", "chat_template.jinja", "chat_template.json",
)

# safetensors dtype names → (torch dtype, bytes per element)
ST_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
DTYPE_ALIASES = {
    "bfloat16": "BF16", "bf16": "BF16", "float16": "F16", "fp16": "F16", "half": "F16",
    "float32": "F32", "fp32": "F32", "float": "F32",
}
HF_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
F16_MAX = 65504.0

# Adapter-config fields that make an adapter something other than plain LoRA (PEFT marks most of them as LoRA
# variants with their own merge), or that change which weights exist.
REFUSED_FIELDS = {
    "use_dora": "DoRA (use_dora) rescales each merged weight by a learned magnitude",
    "lora_bias": "lora_bias adds a bias to lora_B",
    "use_qalora": "QALoRA pools its inputs",
    "use_bdlora": "BD-LoRA uses block-diagonal factors",
    "velora_config": "VeLoRA is a LoRA variant",
    "kasa_config": "KaSA truncates the base weights' singular values",
    "monteclora_config": "MonteCLoRA samples its factors",
    "arrow_config": "Arrow routes between adapters per token",
    "alora_invocation_tokens": "an activated LoRA (aLoRA) applies only after its invocation tokens",
    "target_parameters": "target_parameters adapts nn.Parameters (fused MoE experts)",
    "layer_replication": "layer_replication builds a different stack of layers",
    "trainable_token_indices": "trainable_token_indices trains single embedding rows",
    "megatron_config": "Megatron-parallel LoRA layers",
}
# init_lora_weights values that rewrite the base weights (or are variants): the adapter needs the modified base.
REFUSED_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga", "mica")
_BNB_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format")
_BNB_PARTS = (".quant_state.", ".weight.quant_state")


@dataclass(frozen=True)
class MergeReport:
    """What merge_adapter wrote: shard file names (in order), LoRA modules merged, whole tensors the adapter replaced
    (trained biases, modules_to_save), bytes written (every file in out_dir) and wall time."""

    out_dir: Path
    shards: tuple[str, ...]
    modules_merged: int
    tensors_replaced: int
    bytes_written: int
    elapsed_s: float

    def __str__(self) -> str:
        return (f"merged {self.modules_merged} LoRA modules ({self.tensors_replaced} tensors replaced) into "
                f"{len(self.shards)} shard(s), {self.bytes_written / 2**20:.1f} MiB, in {self.elapsed_s:.1f} s "
                f"→ {self.out_dir}")


# ---------------------------------------------------------------------------------------------------------------
# safetensors, tensor by tensor


@dataclass(frozen=True)
class _Entry:
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
class _Shard:
    path: Path
    entries: tuple[_Entry, ...]  # in file order
    metadata: dict[str, str] | None


def _read_header(path: Path) -> _Shard:
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
        entries.append(_Entry(name, info["dtype"], tuple(info["shape"]), data_start + begin, data_start + end))
    entries.sort(key=lambda entry: entry.start)
    position = data_start
    for entry in entries:
        itemsize = ST_DTYPES.get(entry.dtype, (None, None))[1]
        if entry.start != position or (itemsize and entry.end - entry.start != entry.numel * itemsize):
            raise ValueError(f"{path}: tensor {entry.name} has inconsistent data offsets (a truncated file?)")
        position = entry.end
    if position != size:
        raise ValueError(f"{path}: header describes {position} bytes, the file has {size} (a truncated file?)")
    return _Shard(path, tuple(entries), metadata)


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


def _read_into(handle: BinaryIO, position: int, nbytes: int) -> torch.Tensor:
    """nbytes from `position` as a uint8 tensor."""
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    handle.seek(position)
    done = 0
    while done < nbytes:
        got = handle.readinto(view[done:])
        if not got:
            raise ValueError(f"{getattr(handle, 'name', '?')}: unexpected end of file (a truncated shard?)")
        done += got
    return buffer


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
# the adapter


@dataclass
class Lora:
    """One LoRA module: W[out, in] += scale · B @ A, or W[in, out] += scale · (B @ A)ᵀ when transposed."""

    module: str
    kind: str  # "linear" or "embedding"
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    scale: float = 0.0
    transposed: bool = False


@dataclass
class Adapter:
    config: dict[str, Any]
    loras: dict[str, Lora] = field(default_factory=dict)  # base tensor name → module
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)  # base tensor name → saved tensor


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's get_pattern_key: the first pattern that matches the end of the module path (regex allowed)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_adapter_config(config: dict[str, Any], adapter_dir: Path) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ValueError(f"adapter {adapter_dir} is {config.get('peft_type')!r}, not LORA: only LoRA/QLoRA adapters "
                         "merge here")
    for name, why in REFUSED_FIELDS.items():
        if config.get(name):
            raise ValueError(f"adapter {adapter_dir} sets {name}: {why}; only plain LoRA merges here")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(REFUSED_INITS):
        raise ValueError(f"adapter {adapter_dir} was initialised with init_lora_weights={init!r}, which rewrites the "
                         "base weights: convert it to plain LoRA first (PEFT's save_pretrained(..., "
                         "path_initial_model_for_weight_conversion=...))")
    if config.get("bias", "none") not in ("none", "all", "lora_only"):
        raise ValueError(f"adapter {adapter_dir}: bias={config.get('bias')!r} is not one of none, all, lora_only")
    if not config.get("r") or not config.get("lora_alpha"):
        raise ValueError(f"adapter {adapter_dir}: adapter_config.json lacks r or lora_alpha")


def load_adapter(adapter_dir: Path, weight: float) -> Adapter:
    from safetensors.torch import load_file

    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ValueError(f"adapter {adapter_dir}: no {ADAPTER_CONFIG} (not a PEFT adapter directory)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    _check_adapter_config(config, adapter_dir)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        other = " (adapter_model.bin is pickle: save with safe_serialization)" if (
            adapter_dir / "adapter_model.bin").exists() else ""
        raise ValueError(f"adapter {adapter_dir}: no {ADAPTER_WEIGHTS}{other}")

    adapter = Adapter(config)
    by_module: dict[str, Lora] = {}
    for key, tensor in load_file(str(weights_path)).items():
        if not key.startswith(PEFT_PREFIX):
            raise ValueError(f"adapter {adapter_dir}: key {key} does not start with {PEFT_PREFIX!r} (not saved by "
                             "PEFT from a causal LM?)")
        rest = key[len(PEFT_PREFIX):]
        if match := re.fullmatch(r"(.+)\.lora_([AB])\.weight", rest):
            module, side, kind = match.group(1), match.group(2), "linear"
        elif match := re.fullmatch(r"(.+)\.lora_embedding_([AB])", rest):
            module, side, kind = match.group(1), match.group(2), "embedding"
        elif "lora_" in rest:
            raise ValueError(f"adapter {adapter_dir}: tensor {key} is not a LoRA A/B weight this merge understands")
        else:  # saved whole: trained biases, modules_to_save, embedding layers ("<module>.base_layer.weight")
            if ".original_module." in rest:  # the frozen original of a modules_to_save (bias="all" saves it too)
                continue
            target = rest.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
            if target in adapter.replacements and not torch.equal(adapter.replacements[target], tensor):
                raise ValueError(f"adapter {adapter_dir}: two different tensors saved for {target}")
            adapter.replacements[target] = tensor
            continue
        lora = by_module.setdefault(module, Lora(module, kind))
        if lora.kind != kind:
            raise ValueError(f"adapter {adapter_dir}: module {module} has both linear and embedding LoRA weights")
        if side == "A":
            lora.a = tensor
        else:
            lora.b = tensor

    rslora = bool(config.get("use_rslora"))
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    for module, lora in by_module.items():
        if lora.a is None or lora.b is None:
            raise ValueError(f"adapter {adapter_dir}: module {module} has lora_{'B' if lora.a is None else 'A'} "
                             "but not its partner")
        if lora.a.ndim != 2 or lora.b.ndim != 2:
            raise ValueError(f"adapter {adapter_dir}: module {module} has {lora.a.ndim}-d LoRA weights (a conv "
                             "layer?): only linear and embedding layers merge here")
        r = int(_pattern_value(config.get("rank_pattern") or {}, module, config["r"]))
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
        if lora.a.shape[0] != r or lora.b.shape[1] != r:
            raise ValueError(f"adapter {adapter_dir}: module {module} has rank {lora.a.shape[0]}, "
                             f"adapter_config.json says r={r} (rank_pattern)")
        lora.scale = weight * (alpha / math.sqrt(r) if rslora else alpha / r)
        lora.transposed = lora.kind == "embedding" or fan_in_fan_out
        compute = torch.float64 if torch.float64 in (lora.a.dtype, lora.b.dtype) else torch.float32
        lora.a, lora.b = lora.a.to(compute), lora.b.to(compute)
        adapter.loras[f"{module}.weight"] = lora
    if not adapter.loras:
        raise ValueError(f"adapter {adapter_dir}: {ADAPTER_WEIGHTS} holds no LoRA weights")
    # PEFT's safe merge looks for NaN/inf in every merged weight; a finite adapter cannot produce them from a finite
    # base (bf16/fp32 overflow would need |ΔW| ~ 1e38), so checking the adapter once costs nothing per block.
    for lora in adapter.loras.values():  # a NaN or inf anywhere makes the (float64) sum non-finite
        if not math.isfinite(lora.a.double().sum().item() + lora.b.double().sum().item()):
            raise ValueError(f"adapter {adapter_dir}: module {lora.module} has NaN or infinite LoRA weights (a broken "
                             "adapter)")
    for name, tensor in adapter.replacements.items():
        if tensor.is_floating_point() and not math.isfinite(tensor.double().sum().item()):
            raise ValueError(f"adapter {adapter_dir}: {name} has NaN or infinite values (a broken adapter)")
    return adapter


# ---------------------------------------------------------------------------------------------------------------
# the base


def _base_shards(base_dir: Path) -> tuple[list[str], dict[str, Any] | None]:
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
    names, _ = _base_shards(Path(model_dir))
    return {entry.name: entry.shape for name in names for entry in _read_header(Path(model_dir) / name).entries}


def check_transfer(trained_on: Path, target: Path) -> None:
    """ValueError unless `target` has the architecture and every tensor shape of the base an adapter was trained on
    (the seed moved a StarCoder LoRA onto OctoCoder): the first difference is named."""
    configs = [json.loads((Path(d) / "config.json").read_text(encoding="utf-8")) if (Path(d) / "config.json").is_file()
               else {} for d in (trained_on, target)]
    _check_config_not_quantized(target, configs[1])
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


def _check_config_not_quantized(base_dir: Path, config: dict[str, Any]) -> None:
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        raise ValueError(f"base {base_dir}: config.json has a quantization_config ({method}): {NOT_4BIT}")


def _check_not_quantized(base_dir: Path, config: dict[str, Any], shards: list[_Shard]) -> None:
    _check_config_not_quantized(base_dir, config)
    for shard in shards:
        for entry in shard.entries:
            if entry.name.endswith(_BNB_SUFFIXES) or any(part in entry.name for part in _BNB_PARTS):
                raise ValueError(f"base {base_dir}: {shard.path.name} holds bitsandbytes-quantized state "
                                 f"({entry.name}): {NOT_4BIT}")


def st_dtype(requested: str | None) -> str | None:
    if requested is None:
        return None
    name = DTYPE_ALIASES.get(str(requested).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"dtype {requested!r}: expected one of bfloat16, float16, float32 (never a 4-bit dtype)")
    return name


# ---------------------------------------------------------------------------------------------------------------
# the merge


@dataclass
class _Plan:
    """What to do with one base tensor on its way out."""

    entry: _Entry
    out_dtype: str
    lora: Lora | None = None
    replacement: torch.Tensor | None = None

    @property
    def raw_copy(self) -> bool:
        return self.lora is None and self.replacement is None and self.out_dtype == self.entry.dtype

    @property
    def out_bytes(self) -> int:
        if self.out_dtype == self.entry.dtype:
            return self.entry.end - self.entry.start
        return self.entry.numel * ST_DTYPES[self.out_dtype][1]


def _plan_shard(shard: _Shard, adapter: Adapter, out_dtype: str | None, base_dir: Path) -> list[_Plan]:
    plans = []
    for entry in shard.entries:
        target = entry.dtype if out_dtype is None or entry.dtype not in FLOAT_DTYPES else out_dtype
        plan = _Plan(entry, target, adapter.loras.get(entry.name), adapter.replacements.get(entry.name))
        if (plan.lora is not None or plan.replacement is not None) and entry.dtype not in FLOAT_DTYPES:
            raise ValueError(f"base {base_dir}: {entry.name} is stored as {entry.dtype}, not 16/32-bit floats "
                             f"(quantized?): {NOT_4BIT}")
        if plan.lora is not None:
            lora = plan.lora
            expected = (lora.a.shape[1], lora.b.shape[0]) if lora.transposed else (lora.b.shape[0], lora.a.shape[1])
            if entry.shape != expected:
                raise ValueError(f"adapter module {lora.module}: base weight {entry.name} is {list(entry.shape)}, the "
                                 f"LoRA update is {list(expected)} (fan_in_fan_out={lora.transposed}; another base?)")
        if plan.replacement is not None and tuple(plan.replacement.shape) != entry.shape:
            raise ValueError(f"adapter saves {entry.name} as {list(plan.replacement.shape)}, the base has "
                             f"{list(entry.shape)} (a resized vocabulary? merge into the base it was trained on)")
        plans.append(plan)
    return plans


def _row_blocks(plan: _Plan) -> Iterator[tuple[int, int]]:
    rows = plan.entry.shape[0] if plan.entry.shape else 1
    columns = plan.entry.numel // rows if rows else 0
    step = max(1, BLOCK_BYTES // max(1, columns * 4))
    for first in range(0, rows, step):
        yield first, min(rows, first + step)


def _write_plan(plan: _Plan, source: BinaryIO, sink: StreamWriter, weight: float) -> int:
    entry = plan.entry
    if plan.raw_copy:
        written = 0
        for position in range(entry.start, entry.end, COPY_CHUNK_BYTES):
            written += sink.write(_read_into(source, position, min(COPY_CHUNK_BYTES, entry.end - position)))
        return written
    if entry.numel == 0:
        return 0
    in_dtype, itemsize = ST_DTYPES[entry.dtype]
    out_dtype = ST_DTYPES[plan.out_dtype][0]
    compute = torch.float64 if entry.dtype == "F64" else torch.float32
    rows = entry.shape[0] if entry.shape else 1
    columns = entry.numel // rows
    lora, replacement = plan.lora, plan.replacement
    written = 0
    for first, last in _row_blocks(plan):
        raw = _read_into(source, entry.start + first * columns * itemsize, (last - first) * columns * itemsize)
        block = raw.view(in_dtype).reshape(last - first, columns).to(compute)
        del raw
        if replacement is not None:
            saved = replacement.reshape(rows, columns)[first:last].to(compute, copy=True)  # never a view
            block = saved if weight == 1.0 else block.add_(saved.sub_(block), alpha=weight)
        if lora is not None:
            a, b = lora.a.to(compute), lora.b.to(compute)
            if lora.transposed:  # rows of (B @ A)ᵀ are columns of B @ A
                block.addmm_(a[:, first:last].T, b.T, alpha=lora.scale)
            else:
                block.addmm_(b[first:last], a, alpha=lora.scale)
        if plan.out_dtype == "F16" and entry.dtype != "F16":
            low, high = torch.aminmax(block)
            if low < -F16_MAX or high > F16_MAX:
                raise ValueError(f"{entry.name} holds values beyond float16's range (±{F16_MAX:.0f}): merge into "
                                 "bfloat16 or float32 instead")
        written += sink.write(block.to(out_dtype))
    return written


def _copy_side_files(base_dir: Path, adapter_dir: Path | None, staging: Path, out_dtype: str | None,
                     config: dict[str, Any]) -> None:
    for name in CONFIG_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, staging / name)
    if out_dtype is not None and (base_dir / "config.json").is_file():
        hf_name = HF_DTYPE_NAMES[out_dtype]
        if config.get("dtype", config.get("torch_dtype")) != hf_name:
            updated = dict(config, dtype=hf_name)
            if "torch_dtype" in updated:
                updated["torch_dtype"] = hf_name
            (staging / "config.json").write_text(json.dumps(updated, indent=2, sort_keys=True) + "\n",
                                                 encoding="utf-8")
    # The tokenizer the adapter was trained with (train saves it next to the adapter) wins over the base's.
    tokenizer_source = base_dir
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer_source = adapter_dir
    for name in TOKENIZER_FILES:
        if (tokenizer_source / name).is_file():
            shutil.copyfile(tokenizer_source / name, staging / name)
    for code in base_dir.glob("*.py"):  # trust_remote_code models
        shutil.copyfile(code, staging / code.name)


def merge_adapter(base_dir: Path, adapter_dir: Path | None, out_dir: Path, *, weight: float = 1.0,
                  dtype: str | None = None) -> MergeReport:
    """Merge the LoRA adapter in `adapter_dir` into the safetensors base in `base_dir`, shard by shard, writing a
    model directory `out_dir` (which must not exist) with the base's shard names and index. With no adapter the
    model is copied (and cast, with `dtype`) the same streaming way: how full fine-tunes are exported.

    `weight` scales the adapter (W + weight·ΔW); `dtype` ("bfloat16", "float16", "float32") casts every floating
    tensor of the output, None keeps each tensor's own dtype. Raises ValueError (one line) before writing anything
    for what cannot be merged correctly.
    """
    started = time.monotonic()
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        raise ValueError(f"output {out_dir} exists: refusing to overwrite it (choose a new directory)")
    if not math.isfinite(weight):
        raise ValueError(f"weight {weight} is not a finite number")
    if sys.byteorder != "little":
        raise ValueError("safetensors data is little-endian: merging on a big-endian machine is not supported")
    out_dtype = st_dtype(dtype)

    config_path = base_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    shard_names, index = _base_shards(base_dir)
    shards = [_read_header(base_dir / name) for name in shard_names]
    _check_not_quantized(base_dir, config, shards)
    if index is not None:
        listed = {entry.name for shard in shards for entry in shard.entries}
        absent = [key for key in index["weight_map"] if key not in listed]
        if absent:
            raise ValueError(f"base {base_dir}: {SHARD_INDEX} lists {absent[0]}, which no shard holds")

    adapter = load_adapter(Path(adapter_dir), weight) if adapter_dir is not None else Adapter({})
    present = {entry.name for shard in shards for entry in shard.entries}
    for name, lora in adapter.loras.items():
        if name not in present:
            raise ValueError(f"adapter module {lora.module} not found in the base: no tensor {name} in any shard of "
                             f"{base_dir} (another base model, or weights renamed on load?)")
    for name in adapter.replacements:
        if name not in present:
            raise ValueError(f"adapter saves {name} whole, but no shard of {base_dir} holds it")
    tied = config.get("tie_word_embeddings", True) and "lm_head.weight" not in present
    for lora in adapter.loras.values():
        if lora.kind == "embedding" and tied:
            raise ValueError(f"adapter module {lora.module} adapts an input embedding that the base ties to its "
                             "output head: merged, it would change the head as well, which the adapter does not")
    plans = [_plan_shard(shard, adapter, out_dtype, base_dir) for shard in shards]

    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        for shard, shard_plans in zip(shards, plans, strict=True):
            header = header_bytes([(p.entry.name, p.out_dtype, p.entry.shape, p.out_bytes) for p in shard_plans],
                                   shard.metadata)
            with open(shard.path, "rb", buffering=0) as source, open(staging / shard.path.name, "wb") as handle:
                handle.write(header)
                sink = StreamWriter(handle)
                try:
                    for plan in shard_plans:
                        if _write_plan(plan, source, sink, weight) != plan.out_bytes:
                            raise RuntimeError(f"{shard.path.name}: wrong byte count for {plan.entry.name}")
                except BaseException:
                    sink.close(raise_error=False)
                    raise
                sink.close()
        if index is not None:
            if out_dtype is None:
                shutil.copyfile(base_dir / SHARD_INDEX, staging / SHARD_INDEX)
            else:
                total = sum(plan.out_bytes for shard_plans in plans for plan in shard_plans)
                metadata = dict(index.get("metadata") or {}, total_size=total)
                (staging / SHARD_INDEX).write_text(json.dumps(dict(index, metadata=metadata), indent=2,
                                                              sort_keys=True) + "\n", encoding="utf-8")
        _copy_side_files(base_dir, adapter_dir, staging, out_dtype, config)
        written = sum(path.stat().st_size for path in staging.iterdir() if path.is_file())
        if out_dir.exists():
            raise ValueError(f"output {out_dir} appeared while merging: refusing to overwrite it")
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return MergeReport(out_dir=out_dir, shards=tuple(shard_names), modules_merged=len(adapter.loras),
                       tensors_replaced=len(adapter.replacements), bytes_written=written,
                       elapsed_s=time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.export.merge", description=__doc__.split("\n")[0])
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("adapter_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--weight", type=float, default=1.0, help="scale of the adapter (default 1.0)")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16 or float32 (default: keep the base's)")
    args = parser.parse_args(argv)
    try:
        report = merge_adapter(args.base_dir, args.adapter_dir, args.out_dir, weight=args.weight, dtype=args.dtype)
    except ValueError as error:
        print(f"merge: error: {error}", file=sys.stderr)
        return 2
    print(report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
