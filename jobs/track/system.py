"""System metrics of rank 0's machine on the train stage's MLflow run, and the stage's peak memory at its end.

Every $CLUSTERFT_SYSTEM_METRICS_S seconds (default 15; 0 turns them off; read by jobs.track.tracker) —
system/cpu_percent (the machine), system/memory_rss_gb (this process), system/memory_used_percent, and with NVML and
CUDA system/gpu<i>/memory_used_gb, .../memory_used_percent, .../utilization_percent — and train/peak_memory_gb at the
end (torch.cuda's peak on GPU, the process's peak RSS on CPU). GB are 10^9 bytes.

    monitor = SystemMonitor(tracker, interval)   # the Tracker of the train stage starts one
    monitor.start()                              # a sample every `interval` s, at the tracker's current step
    monitor.stop(peak_memory=True)               # a last sample, then train/peak_memory_gb

psutil and pynvml are imported when a monitor starts, and torch is only looked up in sys.modules (a process without
it reports no GPU). Tested by tests/unit/test_tracking_system.py (NVML replaced by a stand-in module).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any, Protocol

GB = 1e9


class MetricsLog(Protocol):
    """What a monitor needs of its jobs.track.tracker.Tracker: the current training step, and logging at a step."""

    current_step: int

    def _log_values(self, values: dict[str, float], step: int, *, system: bool = False) -> None: ...


class SystemMonitor:
    """Rank 0's machine every `interval` seconds, from a background thread: CPU, this process's memory, the
    machine's memory, and with NVML and CUDA each visible GPU's memory and utilization."""

    def __init__(self, tracker: MetricsLog, interval: float) -> None:
        self.tracker = tracker
        self.interval = interval
        self._stop = threading.Event()
        self._process: Any = None
        self._gpus: list[tuple[int, Any]] = []
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)

    def start(self) -> None:
        try:
            import psutil

            self._process = psutil.Process()
            psutil.cpu_percent(None)  # the first reading only starts the interval
        except ImportError:
            self._process = None
        self._gpus = _nvml_gpus()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            values = self.read()
            if values:
                self.tracker._log_values(values, self.tracker.current_step, system=True)
        except Exception:  # noqa: BLE001 - a sensor failing is no reason to stop
            pass

    def read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if self._process is not None:
            import psutil

            values["system/cpu_percent"] = float(psutil.cpu_percent(None))
            values["system/memory_rss_gb"] = self._process.memory_info().rss / GB
            values["system/memory_used_percent"] = float(psutil.virtual_memory().percent)
        if self._gpus:
            import pynvml

            for index, handle in self._gpus:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                values[f"system/gpu{index}/memory_used_gb"] = memory.used / GB
                values[f"system/gpu{index}/memory_used_percent"] = 100.0 * memory.used / max(memory.total, 1)
                values[f"system/gpu{index}/utilization_percent"] = float(
                    pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        return values

    def stop(self, peak_memory: bool = False) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        if peak_memory:
            self.tracker._log_values({"train/peak_memory_gb": peak_memory_gb()}, self.tracker.current_step)


def peak_memory_gb() -> float:
    """torch.cuda's peak allocation on this rank's GPU; on CPU the process's peak resident memory."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / GB
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / GB if sys.platform == "darwin" else rss * 1024 / GB  # bytes on macOS, KiB on Linux


def _nvml_gpus() -> list[tuple[int, Any]]:
    """(CUDA ordinal, NVML handle) of each visible GPU, when pynvml is importable and CUDA is present."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        indices = [int(i) for i in visible.split(",")] if re.fullmatch(r"\d+(,\d+)*", visible) else range(count)
        return [(ordinal, pynvml.nvmlDeviceGetHandleByIndex(index)) for ordinal, index in enumerate(indices)
                if index < count]
    except Exception:  # noqa: BLE001 - no NVML, no GPU metrics
        return []
