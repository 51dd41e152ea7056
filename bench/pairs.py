"""What the A/B benchmark scripts share, so that their ratios are honest on a shared, noisy machine.

    from pairs import alternate, load, pinned_env, settle, spread     # bench/ is a benchmark script's sys.path[0]

- `alternate(pairs, a, b)`: the runs of `pairs` pairs, the order switched every round (a b, b a, a b, ...), so that
  neither side always runs first (on a warmed cache, or right after the other's disk writes);
- `pinned_env(threads)`: an environment pinning a fresh process's thread pools (torch/OpenMP, MKL, the tokenizers'
  Rayon pool), so a neighbour's load cannot hand one side more cores; the process still calls
  torch.set_num_threads itself;
- `settle(*paths)`: write back everything dirty (a previous run's output would otherwise still be flushing during
  the next run), then remove `paths` and sync again;
- `spread(values)`: "median (min–max)"; `load()`: the 1-minute load average, printed beside each measurement.
"""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path


def alternate(pairs: int, a: str, b: str) -> Iterator[tuple[int, str]]:
    for index in range(pairs):
        for side in ((a, b) if index % 2 == 0 else (b, a)):
            yield index, side


def pinned_env(threads: int, **extra: str) -> dict[str, str]:
    count = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "RAYON_NUM_THREADS": count,
            "TOKENIZERS_PARALLELISM": "false", **extra}


def settle(*paths: Path) -> None:
    os.sync()
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    os.sync()


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def load() -> float:
    return os.getloadavg()[0]
