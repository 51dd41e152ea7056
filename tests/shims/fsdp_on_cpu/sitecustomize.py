"""Test-only shim: let accelerate run an FSDP config on CPU ranks (gloo) instead of silently running DDP.

accelerate turns an FSDP plugin into DistributedType.FSDP only for GPU-like distributed types; on CPU it keeps
MULTI_CPU and trains plain DDP. torch's FSDP itself works over gloo, so with this shim on the path of every rank
(PYTHONPATH=tests/shims/fsdp_on_cpu) the real train job runs real FSDP sharding on this CPU. The patch is applied
when a process imports accelerate.state (processes that never do pay nothing). Nothing in clusterft imports it; on
GPU nodes FSDP needs no help.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

TARGET = "accelerate.state"


def _patch(state: ModuleType) -> None:
    from accelerate.utils import DistributedType

    original_init = state.AcceleratorState.__init__

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    state.AcceleratorState.__init__ = init
    _fsdp1_on_cpu()


def _fsdp1_on_cpu() -> None:
    """FSDP1 compares accelerate's `device_id` (cpu:<local rank> here) with the CPU it computes on ("cpu") and
    refuses the mismatch: the CPU is named without an index."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel

    original_init = FullyShardedDataParallel.__init__

    def init(self: Any, *args: Any, device_id: Any = None, **kwargs: Any) -> None:
        if device_id is not None and torch.device(device_id).type == "cpu":
            device_id = torch.device("cpu")
        original_init(self, *args, device_id=device_id, **kwargs)

    FullyShardedDataParallel.__init__ = init


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _PatchOnImport())
