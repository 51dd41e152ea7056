"""The comparison's plots: one PNG per group (eval loss, train loss and learning rate against tokens seen, or
step, one line per run), drawn with matplotlib's object API (headless, no pyplot). matplotlib is imported inside
functions only.

Tokens seen is the default x axis: methods differ in tokens per step (the starcoder15b recipes by 4×), so a loss at
step 100 of one run and of another are losses after different amounts of data. A group where some run lacks its
tokens per step (launched before the tag existed) is drawn against step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError
from launchers.compare.data import Comparison, Group, RunSummary

# metric → (panel title, y label); one panel each, side by side, in this order
PANELS = (("eval/loss", "Eval loss", "eval loss (nats/token)"), ("train/loss", "Train loss", "train loss (nats/token)"),
          ("train/learning_rate", "Learning rate", "learning rate"))
X_AXES = ("tokens", "step")


def plot_paths(groups: list[Group], root: Path, output: str | Path | None, stamp: str) -> dict[str, Path]:
    """slug → PNG path: <runs root>/compare/<stamp>-<slug>.png; --output FILE (several groups: FILE-<slug>.png);
    --output DIR (an existing directory, or one ending in /): the default names inside it."""
    if output is None or Path(output).is_dir() or str(output).endswith(("/", "\\")):
        folder = root / "compare" if output is None else Path(output)
        return {g.slug: folder / f"{stamp}-{g.slug}.png" for g in groups}
    path = Path(output)
    if len(groups) == 1:
        return {groups[0].slug: path}
    return {g.slug: path.with_name(f"{path.stem}-{g.slug}{path.suffix or '.png'}") for g in groups}


def write_plots(comparison: Comparison, paths: dict[str, Path], x: str = "tokens") -> dict[str, Path]:
    """One PNG per group that has anything to plot, against `x` (tokens or step); returns slug → path of those
    written."""
    written: dict[str, Path] = {}
    for g in comparison.groups:
        if not any(run.histories.get(key) for run in g.runs for key, _, _ in PANELS):
            continue
        path = paths[g.slug]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_png(figure(g, x), path)
        except OSError as err:
            raise UserError(f"cannot write the plot {path}: {err.strerror or err}") from err
        written[g.slug] = path
    return written


def figure(g: Group, x: str = "tokens") -> Any:
    """The group's figure: three panels side by side (eval loss, train loss, learning rate against tokens seen or
    step), one line per run (colour per run, line style per method; a star on each run's best eval loss, explained
    in the legend), one legend under the panels. Learning rates that differ by more than 10× (full FT vs QLoRA) get
    a log axis. Headless: no pyplot."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter, MaxNLocator

    by_tokens = x == "tokens" and all(run.tokens_seen(1) is not None for run in g.runs)

    styles = {"full": "-", "lora": "--", "qlora": "-."}
    starred = False
    fig = Figure(figsize=(16, 5.2), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(PANELS), sharex=True)
    colours = [f"C{i % 10}" for i in range(len(g.runs))]
    for ax, (key, title, ylabel) in zip(axes, PANELS):
        drawn = []
        for run, colour in zip(g.runs, colours):
            history = run.histories.get(key)
            if not history:
                continue
            steps, values = zip(*history)
            if by_tokens:
                steps = tuple(_tokens(run, step) for step in steps)
            sparse = key == "eval/loss" or len(history) <= 20
            ax.plot(steps, values, color=colour, linestyle=styles.get(run.method, ":"), linewidth=1.8,
                    marker="o" if sparse else None, markersize=4, label=f"{run.label} ({run.method})")
            drawn.append(max(values))
            best = run.best_eval() if key == "eval/loss" else None
            if best is not None and len(history) > 1:
                starred = True
                ax.plot([_tokens(run, best[0]) if by_tokens else best[0]], [best[1]], marker="*", markersize=13,
                        color=colour, markeredgecolor="white", linestyle="none", zorder=5)
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("tokens seen" if by_tokens else "step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if by_tokens:
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        if key == "train/learning_rate":
            peaks = [peak for peak in drawn if peak > 0]
            if peaks and max(peaks) > 10 * min(peaks):
                ax.set_yscale("log")
                ax.set_ylim(min(peaks) / 100, max(peaks) * 2)  # the schedule's tail to 0 would take the axis
                ax.set_title(f"{title} (log scale)", fontsize=12)
            else:
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if not drawn:
            ax.text(0.5, 0.5, f"no {key} logged", transform=ax.transAxes, ha="center", va="center", color="0.5")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if starred:
        handles["best eval loss"] = Line2D([], [], marker="*", markersize=13, color="0.35", linestyle="none")
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncols=min(len(handles), 4), frameon=False, fontsize=10)
    fig.suptitle(g.plot_title, fontsize=13, fontweight="bold")
    return fig


def _tokens(run: RunSummary, step: int) -> int:
    return run.tokens_seen(step) or 0


def save_png(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")
