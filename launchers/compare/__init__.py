"""`launch compare`: final and best metrics of several runs side by side, paired by model and data, plotted.

    launch compare                                   # the parent runs of every experiment in the store
    launch compare --experiment starcoder15b         # every parent run of one experiment
    launch compare sc-full sc-qlora --format csv     # these runs (name or experiment/name), as CSV
    launch compare sc-full sc-qlora --output cmp.png # the plot where you want it

Runs come from MLflow (the layout `jobs.track.tracker` writes): one parent run per launch, tagged clusterft.*, and one
child run per stage (tag mlflow.parentRunId, tag clusterft.stage). A RUN argument is found in the runs root like
`launch status` finds it, and its parent run id read from <run>/mlflow.json; --experiment adds every parent run of
that MLflow experiment; with neither, every parent run in the store is compared.

Runs of the same model and data (equal clusterft.model_name and clusterft.data) form a group; within a group every
two runs of different methods are paired ("full vs qlora": eval loss difference, speed and compute ratios). A run
whose model and data no other selected run shares goes to one last group, "other runs" (never paired).

Each group gets one PNG (three panels side by side: eval loss, train loss and learning rate against tokens seen, or
step with --x step; one line per run), written to <runs root>/compare/<timestamp>-<group>.png, or to --output (with
several groups: <output stem>-<group>.png; an existing directory: the default names inside it). Every compared run's
parent run gets the table (compare.txt, compare.csv) and its group's PNG as artifacts under compare/<digest>/, once:
the digest is of the table itself, so comparing the same finished runs again logs nothing new.

MLflow and matplotlib are imported inside functions only: `launch --help` stays fast. This module runs the command;
data.py holds the runs and their groups, store.py the MLflow side, table.py the text/CSV/JSON output, plot.py the PNGs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from jobs.spec.errors import UserError, did_you_mean
from jobs.spec.rundir import timestamp
from launchers.compare.data import Comparison, group
from launchers.compare.plot import plot_paths, write_plots
from launchers.compare.store import Store, connect, log_artifacts, mlflow_errors, select_parents, summarise
from launchers.compare.table import render, to_csv, to_text

FORMATS = ("text", "csv", "json")


def compare(root: Path, refs: Sequence[str] = (), experiment: str | None = None, fmt: str = "text",
            output: str | Path | None = None, write: bool = True, x: str = "tokens") -> str:
    """What `launch compare` prints on stdout. With `write`, also the PNGs (against `x`: tokens or step) and the
    artifacts on each parent run."""
    if fmt not in FORMATS:
        raise UserError(f"flag --format {fmt}: {did_you_mean(fmt, FORMATS)}")
    comparison = collect(root, refs, experiment)
    stamp = timestamp()
    plots: dict[str, Path] = {}
    logged = None
    if write:
        plots = write_plots(comparison, plot_paths(comparison.groups, root, output, stamp), x)
        texts = {"compare.txt": to_text(comparison) + "\n", "compare.csv": to_csv(comparison)}
        digest = hashlib.sha256(texts["compare.csv"].encode()).hexdigest()[:12]
        logged = log_artifacts(comparison, texts, plots, f"compare/{digest}")
    return render(comparison, fmt, plots, logged)


def collect(root: Path, refs: Sequence[str] = (), experiment: str | None = None) -> Comparison:
    """The selected parent runs with their children's metrics, grouped; UserError when there is nothing to compare."""
    client, uri = connect(root)
    with mlflow_errors(uri):
        store = Store(client)
        parents = select_parents(store, root, uri, refs, experiment)
        runs = [summarise(store, parent) for parent in parents]
    several = len({run.experiment for run in runs}) > 1
    for run in runs:
        run.label = f"{run.experiment}/{run.name}" if several else run.name
    return Comparison(uri, runs, group(runs), client)
