"""System metrics (jobs.track.system) and the git commit (jobs.track.provenance).

- on this CPU: system/cpu_percent, system/memory_rss_gb, system/memory_used_percent, and a peak memory
- with NVML and CUDA: one set of system/gpu<i>/* per visible GPU, in CUDA order (NVML is replaced by a stand-in
  module here — this machine has no GPU; the real one is exercised by the GPU tests on a GPU machine)
- the git commit of the checkout, or "unknown", never an error

    .venv/bin/python -m pytest tests/unit/test_tracking_system.py -q
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from jobs.spec.context import RankContext
from jobs.track.provenance import git_commit
from jobs.track.system import SystemMonitor, peak_memory_gb
from jobs.track.tracker import Tracker


def monitor(tmp_path: Path) -> SystemMonitor:
    return SystemMonitor(Tracker(RankContext(run_dir=tmp_path / "runs" / "e" / "r"), "train"), interval=60)


def test_cpu_sample_and_peak_memory(tmp_path: Path) -> None:
    sampler = monitor(tmp_path)
    sampler.start()
    try:
        values = sampler.read()
    finally:
        sampler._stop.set()
    assert set(values) == {"system/cpu_percent", "system/memory_rss_gb", "system/memory_used_percent"}
    assert 0 < values["system/memory_rss_gb"] < 1024 and 0 < values["system/memory_used_percent"] <= 100
    assert 0 < peak_memory_gb() < 1024


def test_gpu_metrics_per_visible_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    handles = {0: "nvml0", 1: "nvml1", 2: "nvml2", 3: "nvml3"}
    fake: Any = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: len(handles)
    fake.nvmlDeviceGetHandleByIndex = lambda index: handles[index]
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=int(h[-1]) * 10**9 + 10**9, total=80 * 10**9)
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50 + int(h[-1]))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    sampler = monitor(tmp_path)
    sampler.start()
    try:
        values = sampler.read()
    finally:
        sampler._stop.set()
    assert values["system/gpu0/memory_used_gb"] == pytest.approx(3.0)  # cuda:0 is NVML device 2
    assert values["system/gpu1/utilization_percent"] == 53.0
    assert values["system/gpu1/memory_used_percent"] == pytest.approx(5.0)
    assert not any(key.startswith("system/gpu2") for key in values)


def test_git_commit_never_fails(tmp_path: Path) -> None:
    commit = git_commit()
    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{40}", commit)
    assert git_commit(tmp_path) == "unknown"
    (tmp_path / ".git").write_text("gitdir: nowhere\n")
    assert git_commit(tmp_path) == "unknown"
