"""Merge a LoRA/QLoRA adapter into its base model, streaming shard by shard, into the base's 16-bit (or fp32) weights.

    merge_adapter(base_dir, adapter_dir, out_dir, weight=1.0, dtype=None) -> MergeReport
    python -m jobs.export.merge BASE_DIR ADAPTER_DIR OUT_DIR [--weight 0.8] [--dtype bfloat16]
    .venv/bin/python -m pytest tests/unit/test_merge.py -q          # against PEFT's logits; bench/merge_stream.py

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
`from_pretrained` in the tests. The header reading/writing, shard discovery, 4-bit checks and the writer thread
are `jobs.common.hf_files` (shared with consolidation and the launcher's transfer check); the adapter is read by
`jobs.common.lora_adapter`.

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
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from jobs.common.hf_files import (
    CONFIG_FILES,
    FLOAT_DTYPES,
    HF_DTYPE_NAMES,
    NOT_4BIT,
    SHARD_INDEX,
    ST_BYTES,
    TOKENIZER_FILES,
    Entry,
    Shard,
    StreamWriter,
    base_shards,
    check_not_quantized,
    header_bytes,
    read_header,
    st_dtype,
    torch_dtypes,
)
from jobs.common.lora_adapter import Adapter, Lora, load_adapter

COPY_CHUNK_BYTES = 16 << 20  # unchanged tensors are copied in pieces of this size
BLOCK_BYTES = 16 << 20  # merged tensors are computed in row blocks of at most this many float32 bytes
F16_MAX = 65504.0
TORCH_DTYPES = torch_dtypes()


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


@dataclass
class _Plan:
    """What to do with one base tensor on its way out."""

    entry: Entry
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
        return self.entry.numel * ST_BYTES[self.out_dtype]


def _plan_shard(shard: Shard, adapter: Adapter, out_dtype: str | None, base_dir: Path) -> list[_Plan]:
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
    in_dtype, itemsize = TORCH_DTYPES[entry.dtype], ST_BYTES[entry.dtype]
    out_dtype = TORCH_DTYPES[plan.out_dtype]
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
    shard_names, index = base_shards(base_dir)
    shards = [read_header(base_dir / name) for name in shard_names]
    check_not_quantized(base_dir, config, shards)
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
