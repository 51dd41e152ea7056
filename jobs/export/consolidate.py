"""A DeepSpeed ZeRO-3 checkpoint (saved without the 16-bit gather) → a safetensors model directory, tensor by tensor.

    from jobs.export.consolidate import is_zero_checkpoint, consolidate_zero3
    if is_zero_checkpoint(final):
        consolidate_zero3(final, out_dir, dtype="bfloat16")       # out_dir must not exist
    python bench/zero3_consolidate.py                              # peak RSS and time against zero_to_fp32

A ZeRO-3 checkpoint directory holds `latest` (the tag, e.g. global_step500) and, per rank r, the tag's
zero_pp_rank_r_mp_rank_00_model_states.pt (parameter names and shapes per optimizer group, buffers, ties) and
*zero_pp_rank_r_mp_rank_00_optim_states.pt (the rank's flat fp32 partition of every group, and the optimizer
moments). Each parameter of n values is split into world-size pieces of ceil(n / world) values, laid end to end in
each rank's flat group; a parameter is the concatenation of its pieces, cut to n. That is what DeepSpeed's
zero_to_fp32 computes, but it loads every rank's files and builds the whole fp32 state dict before writing it. Here
the layout (names, shapes) comes first, from the model states, so every shard's safetensors header is written before
its data; then the optimizer files are memory-mapped (torch.load(mmap=True): only the fp32 pieces are read, never
the moments), each parameter is assembled on its own, cast and streamed to its shard, and the files are mapped
afresh every REMAP_BYTES so that the pages read stop counting. The peak is about one parameter plus REMAP_BYTES,
above the imports: torch and safetensors-format helpers only. The pickles also name DeepSpeed's classes (its loss
scaler, the ZeRO stage enum), which a plain torch.load would import, and with them DeepSpeed's dependencies (MLflow,
pandas, SciPy, ...: ~140 MiB); they are read as inert placeholders instead (`load_torch_only`), never used here.

Tied parameters (DeepSpeed's shared_params, e.g. lm_head ↔ embeddings) are written once, as save_pretrained does;
buffers come from rank 0's model states. config.json (with the output dtype), generation config and tokenizer files
are copied from the checkpoint directory. The directory is written under a hidden name and renamed into place.
"""

from __future__ import annotations

import gc
import json
import math
import os
import pickle
import re
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from jobs.common.hf_files import (
    CONFIG_FILES,
    HF_DTYPE_NAMES,
    SHARD_INDEX,
    ST_BYTES,
    TOKENIZER_FILES,
    StreamWriter,
    header_bytes,
    st_dtype,
    torch_dtypes,
)

SHARD_BYTES = 2 << 30  # output shards, as save_pretrained's 2 GB default; nothing holds a whole shard in memory
REMAP_BYTES = 32 << 20  # optimizer-file pages read before the files are mapped afresh
TORCH_DTYPES = torch_dtypes()
ST_NAMES = {torch_dtype: name for name, torch_dtype in TORCH_DTYPES.items()}
_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(model|optim)_states\.pt$")
_IMPORTABLE = frozenset(sys.stdlib_module_names) | {"torch", "numpy"}  # what a checkpoint's pickle may import


class Placeholder:
    """Stands in for a class a checkpoint's pickle names outside torch, numpy and the standard library: built and
    filled the ways pickle builds objects, keeping what it was given, never used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _TorchOnlyUnpickler(pickle.Unpickler):
    placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.partition(".")[0] in _IMPORTABLE:
            return super().find_class(module, name)
        key = (module, name)
        if key not in self.placeholders:
            self.placeholders[key] = type(name, (Placeholder,), {"__module__": module, "__qualname__": name})
        return self.placeholders[key]


_TORCH_ONLY = types.ModuleType("torch_only_pickle")  # torch.load's pickle_module: it subclasses .Unpickler
_TORCH_ONLY.Unpickler = _TorchOnlyUnpickler  # type: ignore[attr-defined]


def load_torch_only(path: Path) -> Any:
    """torch.load of a DeepSpeed states file, memory-mapped, importing nothing beyond torch, numpy and the standard
    library: any other class the pickle names is a `Placeholder`."""
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False, pickle_module=_TORCH_ONLY)


def is_zero_checkpoint(directory: Path) -> bool:
    """A DeepSpeed checkpoint (`latest` and the tag's per-rank files) with no 16-bit model next to it."""
    directory = Path(directory)
    if not (directory / "latest").is_file() or any(directory.glob("*.safetensors")):
        return False
    tag = (directory / "latest").read_text().strip()
    return any((directory / tag).glob("*zero_pp_rank_*_model_states.pt"))


def _rank_files(tag_dir: Path, kind: str) -> list[Path]:
    found = sorted((int(m.group(1)), p) for p in tag_dir.iterdir()
                   if (m := _RANK.search(p.name)) and m.group(2) == kind)
    if not found:
        raise ValueError(f"{tag_dir}: no ZeRO {kind} states (zero_pp_rank_*_mp_rank_00_{kind}_states.pt)")
    ranks = [rank for rank, _ in found]
    if ranks != list(range(len(ranks))):
        raise ValueError(f"{tag_dir}: {kind} states of ranks {ranks}: a rank's file is missing (a partial checkpoint?)")
    return [path for _, path in found]


class Zero3Checkpoint:
    """The model inside a ZeRO-3 checkpoint directory: its layout (names, shapes, dtypes, in model order) and its
    tensors, assembled one at a time from the ranks' memory-mapped fp32 partitions."""

    def __init__(self, directory: Path, remap_bytes: int = REMAP_BYTES) -> None:
        directory = Path(directory)
        self.tag_dir = directory / (directory / "latest").read_text().strip()
        model_files = _rank_files(self.tag_dir, "model")
        self.optim_files = _rank_files(self.tag_dir, "optim")
        if len(model_files) != len(self.optim_files):
            raise ValueError(f"{self.tag_dir}: {len(model_files)} model states but {len(self.optim_files)} "
                             "optimizer states")
        states = load_torch_only(model_files[0])
        if states.get("frozen_param_shapes"):
            raise ValueError(f"{self.tag_dir}: frozen parameters (an adapter run): export its adapter instead")
        self.world = len(self.optim_files)
        self.groups: list[dict[str, Any]] = list(states["param_shapes"])
        self.tied = set((states.get("shared_params") or {}).keys())
        module = states.get("module") or {}
        self.buffers = {name: module[name].clone() for name in states.get("buffer_names") or [] if name in module}
        self.remap_bytes = remap_bytes

    def layout(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        params = [(name, tuple(shape), torch.float32) for shapes in self.groups for name, shape in shapes.items()
                  if name not in self.tied]
        return params + [(name, tuple(t.shape), t.dtype) for name, t in self.buffers.items()]

    def _flat_groups(self) -> list[list[torch.Tensor]]:
        return [load_torch_only(path)["optimizer_state_dict"]["fp32_flat_groups"] for path in self.optim_files]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) in layout order. The optimizer files are mapped afresh every `remap_bytes` read, so the
        pages read so far stop counting towards this process's memory."""
        flats = self._flat_groups()
        read = 0
        for group, shapes in enumerate(self.groups):
            offset = 0
            for name, shape in shapes.items():
                numel = math.prod(shape)
                piece = math.ceil(numel / self.world)
                if name not in self.tied:
                    parts = [flats[rank][group].narrow(0, offset, piece) for rank in range(self.world)]
                    yield name, torch.cat(parts)[:numel].view(*shape)  # cat copies: nothing of the map stays
                    read += numel * 4
                offset += piece
                if read >= self.remap_bytes:
                    del parts
                    flats = []  # drop the maps (the yielded tensors are copies), then map again
                    gc.collect()
                    flats = self._flat_groups()
                    read = 0
            if offset != flats[0][group].numel():
                raise ValueError(f"{self.tag_dir}: group {group} holds {flats[0][group].numel()} values per rank, the "
                                 f"parameter shapes account for {offset} (not a ZeRO-3 checkpoint of this layout)")
        yield from self.buffers.items()


def consolidate_zero3(checkpoint_dir: Path, out_dir: Path, dtype: str | None = None,
                      shard_bytes: int = SHARD_BYTES) -> Path:
    """Write the checkpoint's model as safetensors shards (with an index when there are several) in `out_dir`,
    cast to `dtype` (default: config.json's dtype, else float32), streaming: each tensor is written as soon as it
    is assembled."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if out_dir.exists():
        raise ValueError(f"output {out_dir} exists: refusing to overwrite it")
    config_path = checkpoint_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    configured = config.get("dtype") or config.get("torch_dtype") or "float32"
    out_dtype = st_dtype(dtype or configured) or "F32"
    checkpoint = Zero3Checkpoint(checkpoint_dir)
    entries = []  # (name, safetensors dtype, shape, bytes)
    for name, shape, source in checkpoint.layout():
        kind = out_dtype if source.is_floating_point else ST_NAMES[source]
        entries.append((name, kind, shape, math.prod(shape) * ST_BYTES[kind]))
    shards = _split(entries, shard_bytes)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        names = _shard_names(len(shards))
        tensors = checkpoint.tensors()
        for file_name, shard in zip(names, shards, strict=True):
            with open(staging / file_name, "wb") as handle:
                handle.write(header_bytes(shard, {"format": "pt"}))
                sink = StreamWriter(handle)
                try:
                    for name, kind, _, _ in shard:
                        got, tensor = next(tensors)
                        assert got == name, (got, name)  # the layout and the tensors come in the same order
                        sink.write(tensor.to(TORCH_DTYPES[kind]))
                finally:
                    sink.close()
        if len(shards) > 1:
            weight_map = {name: file_name for file_name, shard in zip(names, shards, strict=True)
                          for name, _, _, _ in shard}
            index = {"metadata": {"total_size": sum(e[3] for e in entries)}, "weight_map": weight_map}
            (staging / SHARD_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in (*CONFIG_FILES, *TOKENIZER_FILES):
            if (checkpoint_dir / name).is_file():
                shutil.copyfile(checkpoint_dir / name, staging / name)
        if config:
            updated = dict(config, dtype=HF_DTYPE_NAMES[out_dtype])
            (staging / "config.json").write_text(json.dumps(updated, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _split(entries: list[tuple[str, str, tuple[int, ...], int]],
           limit: int) -> list[list[tuple[str, str, tuple[int, ...], int]]]:
    shards: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry[3] > limit:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry[3]
    return shards


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{number:05d}-of-{count:05d}.safetensors" for number in range(1, count + 1)]
