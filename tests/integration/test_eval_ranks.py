"""The eval stage split over 2 CPU ranks (gloo) writes what 1 rank writes: the same greedy completions, in problem
order, and the same scores, through the real `launch eval` and local executor.

    .venv/bin/python -m pytest tests/integration/test_eval_ranks.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import assert_ok, launch
from tests.unit.test_export import make_run


def results(run: Path, ranks: int) -> tuple[dict[str, object], list[dict[str, object]], list[dict[str, object]]]:
    (out,) = [p for p in (run / "eval").iterdir() if json.loads((p / "results.json").read_text())["ranks"] == ranks]
    rows = [[json.loads(line) for line in (out / name).read_text().splitlines()] for name in ("humaneval.jsonl",
                                                                                              "fim.jsonl")]
    return json.loads((out / "results.json").read_text())["metrics"], rows[0], rows[1]


def test_two_ranks_generate_what_one_rank_generates(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, "lora")
    for ranks in ("1", "2"):
        result = launch("eval", "r1", "--ranks", ranks, "--problems", "5", "eval.fim_samples=5", "eval.heldout=false",
                        "eval.max_new_tokens=24", cwd=tmp_path)
        assert_ok(result)
        assert f"on {ranks} rank(s)" in result.stdout
    one, two = results(run.path, 1), results(run.path, 2)
    assert [r["task_id"] for r in two[1]] == [f"HumanEval/{i}" for i in range(5)]
    assert [r["completion"] for r in two[1]] == [r["completion"] for r in one[1]]
    assert [r["written"] for r in two[2]] == [r["written"] for r in one[2]]
    assert two[0] == one[0]


class Echo:
    """A stand-in engine: each prompt's completion is the prompt reversed."""

    name = "echo"

    def generate(self, requests):  # noqa: ANN001, ANN201
        return [[[p[::-1]] * r.settings.samples for p in r.prompts] for r in requests]


def split_on_rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from jobs.eval.generation import GenerationRequest, GenerationSettings
    from jobs.eval.stage import generate_split
    from jobs.spec.context import RankContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    prompts = [f"prompt {i}" for i in range(5)]
    merged = generate_split(Echo(), [GenerationRequest(prompts, GenerationSettings())],
                            RankContext(Path(out), rank=rank, world_size=world))
    Path(f"{out}.{rank}").write_text(json.dumps({"merged": merged, "in_group": dist.is_initialized()}))


def test_after_the_split_every_rank_leaves_the_group_and_rank_0_has_every_completion(tmp_path: Path) -> None:
    """Rank 0 then scores alone: the others must not wait for it in a barrier (a long scoring pass times it out)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(split_on_rank, args=(2, port, str(tmp_path / "out")), nprocs=2, join=True)
    zero, one = (json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1))
    assert zero["merged"] == [[[f"prompt {i}"[::-1]] for i in range(5)]] and one["merged"] is None
    assert not zero["in_group"] and not one["in_group"]
