"""The planner: ZeRO-3 model states exactly as DeepSpeed's own estimator counts them, the seed's one-GPU cases,
the refusal of a run that does not fit (one line, the smallest change that fits, --force), the JSON figures, the
scaling table, and measured MFU read from docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.spec.gpus import GPUS
from launchers.planner.estimate import measured_mfu
from launchers.planner.memory import zero3_model_states
from tests.unit.launch_harness import CliResult, assert_one_error_line


@pytest.mark.parametrize(("total", "largest"), [(15_517_462_528, 301_989_888), (1_137_000_000, 100_663_296)])
@pytest.mark.parametrize(("gpus", "nodes"), [(1, 1), (8, 1), (8, 2), (8, 64)])
@pytest.mark.parametrize(("offload_optimizer", "offload_params"), [(False, False), (True, False), (True, True)])
def test_zero3_model_states_are_deepspeeds_own(total: int, largest: int, gpus: int, nodes: int,
                                               offload_optimizer: bool, offload_params: bool) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, gpus, nodes, offload_optimizer,
                                                        offload_params, zero_init=True)
    assert zero3_model_states(total, largest, gpus, nodes, offload_optimizer, offload_params) == (cpu, gpu)


def test_zero3_model_states_agree_with_deepspeeds_printed_table() -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        estimate_zero3_model_states_mem_needs_all_cold(15_517_462_528, 301_989_888, num_gpus_per_node=8, num_nodes=2)
    row = next(line for line in printed.getvalue().splitlines()
               if "offload_param=none, offload_optimizer=none, zero_init=1" in line)
    cpu_gb, gpu_gb = (float(x) for x in re.findall(r"([\d.]+)GB", row))
    cpu, gpu = zero3_model_states(15_517_462_528, 301_989_888, 8, 2, False, False)
    assert (round(cpu / 2**30, 2), round(gpu / 2**30, 2)) == (cpu_gb, gpu_gb)


def plan_json(launch: Callable[..., CliResult], *argv: str) -> dict:
    result = launch("plan", *argv, "--format", "json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_the_seeds_one_gpu_qlora_fits_and_a_full_fine_tune_does_not(launch: Callable[..., CliResult]) -> None:
    qlora = plan_json(launch, "qlora", "starcoder15b", "-N", "1", "--gpus-per-node", "1", "--gpu", "a100-40gb")
    assert qlora["feasible"] and qlora["verdict"] == "fits"
    assert qlora["per_gpu_gb"]["limit"] == GPUS["a100-40gb"].memory_gib
    full = plan_json(launch, "full-ft", "starcoder15b", "-N", "1", "--gpus-per-node", "1", "--gpu", "a100-80gb")
    assert not full["feasible"] and full["verdict"] == "does not fit"
    # 18 bytes per parameter on one GPU: 15.5B parameters need ~260 GiB of model states
    assert full["per_gpu_gb"]["model_states"] > 250 > full["per_gpu_gb"]["limit"]
    text = launch("plan", "full-ft", "starcoder15b", "-N", "1", "--gpus-per-node", "1", "--gpu", "a100-80gb").out
    assert "verdict:     does not fit: memory per GPU" in text and "largest: optimizer states" in text


def test_the_json_has_every_figure(launch: Callable[..., CliResult]) -> None:
    figures = plan_json(launch, "full-ft", "starcoder15b", "-N", "2", "--price", "2.5")
    assert set(figures["per_gpu_gb"]) >= {"model_states", "activations", "buffers", "total", "limit"}
    assert set(figures["cpu_per_node_gb"]) >= {"load", "checkpoint", "final_save"}
    for key in ("checkpoint_gb", "step_seconds", "wall_hours", "gpu_hours", "cost"):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert figures["cost"] == pytest.approx(figures["gpu_hours"] * 2.5, rel=1e-3)
    assert figures["checkpoint_gb"] == pytest.approx(12 * 15_517_462_528 / 2**30, rel=1e-3)  # no 16-bit gather
    assert figures["per_gpu_gb"]["total"] == pytest.approx(sum(figures["per_gpu_gb"][k] for k in
                                                               ("model_states", "activations", "buffers")), abs=0.03)


def test_a_submission_that_does_not_fit_is_refused_in_one_line(launch: Callable[..., CliResult],
                                                               tmp_path: Path) -> None:
    line = assert_one_error_line(launch("full-ft", "starcoder15b", "-N", "1", "--gpus-per-node", "1", "-p", "gpu"))
    assert "starcoder15b/full-ft does not fit: memory per GPU" in line
    assert "it fits with -N 4" in line and "--force" in line  # 4 × 1 GPU: 18 bytes × 15.5B / 4 = 65 GiB
    assert not (tmp_path / "runs").exists()
    dry = launch("full-ft", "starcoder15b", "-N", "1", "--gpus-per-node", "1", "--dry-run")
    assert dry.code == 2 and "verdict:     does not fit" in dry.out  # the table, then the same one line
    forced = launch("full-ft", "starcoder15b", "-N", "1", "--gpus-per-node", "1", "--dry-run", "--force")
    assert forced.code == 0 and "submitted anyway (--force)" in forced.err


def test_the_smallest_change_comes_first(launch: Callable[..., CliResult]) -> None:
    """Micro batch 64 of 2048 tokens does not fit on 8 GPUs; gradient checkpointing alone makes it fit."""
    line = assert_one_error_line(launch("full-ft", "starcoder15b", "training.per_device_batch_size=16",
                                        "training.gradient_checkpointing=false", "-p", "gpu"))
    assert "largest: activations" in line and "it fits with training.gradient_checkpointing=true" in line


def test_the_scaling_table_has_a_row_per_node_count(launch: Callable[..., CliResult]) -> None:
    result = launch("plan", "qlora", "starcoder15b", "--nodes", "1,2,4,8,16,32,64")
    assert result.code == 0, result.err
    rows = [line.split() for line in result.out.splitlines()[1:] if line[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "4", "8", "16", "32", "64"]
    assert [int(row[1]) for row in rows] == [8 * n for n in (1, 2, 4, 8, 16, 32, 64)]


def test_a_cpu_plan_for_the_laptop_recipes(launch: Callable[..., CliResult]) -> None:
    figures = plan_json(launch, "lora", "tiny-starcoder")
    assert figures["device"] == "cpu" and figures["feasible"] and figures["gpu_hours"] is None


def test_measured_mfu_replaces_the_assumption(tmp_path: Path) -> None:
    benchmarks = tmp_path / "benchmarks.md"
    benchmarks.write_text(
        "# Benchmarks\n\n## MFU measured on GPUs (1)\n\n| GPU | method | checkpointing | MFU |\n|---|---|---|---|\n"
        "| h200 | full | gc | 0.43 |\n| h200 | qlora | gc | .21 |\n\n## Other\n| a100-80gb | full | gc | 0.9 |\n\n"
        "## MFU measured on GPUs (2)\n| h200 | full | gc | 0.45 |\n")
    assert measured_mfu(benchmarks) == {("h200", "full", "gc"): 0.45, ("h200", "qlora", "gc"): 0.21}


def test_bad_flags_are_one_line(launch: Callable[..., CliResult]) -> None:
    assert "-N/--nodes '1,x'" in assert_one_error_line(launch("plan", "lora", "tiny-starcoder", "-N", "1,x"))
    line = assert_one_error_line(launch("plan", "full-ft", "starcoder15b", "--gpu", "b200"))
    assert "resources.gpu_type 'b200' is not in the planner's catalog" in line
