"""Pairwise judging (MT-Bench style): two runs' models answer the same questions; an LLM judge behind an
OpenAI-compatible chat-completions endpoint picks the better answer, asked in both orders to cancel position bias.

    launch judge RUN_A RUN_B --questions questions.jsonl --judge-url http://127.0.0.1:8000/v1 --judge-model NAME

Questions: JSON lines with "question" (or MT-Bench's "turns", whose first turn is used) and optionally "id" /
"question_id". Answers are generated greedily through the tokenizer's chat template. Each pair is judged twice,
A shown first and then B shown first; the judge ends its reply with [[A]], [[B]] or [[C]] (a tie). A model wins a
question only when both orders pick it; a split or a tie is a tie. The judge's API key comes from $JUDGE_API_KEY
(else $OPENAI_API_KEY) and is sent only in the Authorization header: never printed, written or logged.

Results: <run A>/judge/<run B>-<time>/judgments.jsonl (every question, both verdicts, both answers) and
summary.json; an MLflow run "judge A vs B" in A's experiment with judge/win_rate, judge/tie_rate, judge/loss_rate
(from A's side) and the judgments as an artifact.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.spec.errors import UserError

KEY_VARIABLES = ("JUDGE_API_KEY", "OPENAI_API_KEY")
VERDICT = re.compile(r"\[\[([ABC])\]\]")
TIMEOUT_S = 120.0
ATTEMPTS = 3
SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. Choose the assistant that follows the user's instructions and answers the "
    "user's question better: consider helpfulness, correctness, relevance and level of detail. Do not let the order "
    "in which the responses were presented, their length or the assistants' names influence you. After a short "
    'explanation, output your final verdict strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if '
    'assistant B is better, and "[[C]]" for a tie.'
)


@dataclass(frozen=True)
class Question:
    id: str
    text: str


def read_questions(path: Path) -> list[Question]:
    """The questions in `path` (JSON lines); UserError naming file:line for anything else."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"flag --questions {path}: cannot read it ({err})") from None
    questions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not JSON ({err.msg})") from None
        text = row.get("question") if isinstance(row, dict) else None
        if text is None and isinstance(row, dict) and isinstance(row.get("turns"), list) and row["turns"]:
            text = row["turns"][0]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f'{path}:{number}: needs "question" (or MT-Bench "turns"), a non-empty string')
        questions.append(Question(str(row.get("id", row.get("question_id", number))), text))
    if not questions:
        raise UserError(f"flag --questions {path}: no questions in it")
    return questions


def judge_prompt(question: str, first: str, second: str) -> str:
    return (f"[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{first}\n"
            f"[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{second}\n"
            "[The End of Assistant B's Answer]")


def parse_verdict(reply: str) -> str:
    """'A', 'B' or 'C' from the judge's last [[X]]; 'error' when it gave none."""
    found = VERDICT.findall(reply)
    return found[-1] if found else "error"


class JudgeClient:
    """POST {url}/chat/completions, retried on connection errors and 5xx; the key only in a header."""

    def __init__(self, url: str, model: str, timeout_s: float = TIMEOUT_S) -> None:
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self._key = next((os.environ[name] for name in KEY_VARIABLES if os.environ.get(name)), None)

    def check(self) -> None:
        """GET {url}/models before any model answers (generating is the expensive part): the endpoint is up and
        takes the key."""
        self._request(self.endpoint.removesuffix("/chat/completions") + "/models", None)

    def ask(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 1024, "messages": [
            {"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]}).encode()
        try:
            return str(self._request(self.endpoint, body)["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise UserError(f"judge {self.endpoint}: the reply is not a chat completion") from None

    def _request(self, url: str, body: bytes | None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(ATTEMPTS):
            request = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code < 500:
                    break
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                last = str(getattr(err, "reason", err))
            except json.JSONDecodeError:
                raise UserError(f"judge {url}: the reply is not JSON") from None
            time.sleep(min(2 ** attempt, 10))
        raise UserError(f"judge {url}: {last} (after {attempt + 1} attempt{'s' if attempt else ''})")


def judge_pairs(client: JudgeClient, questions: Sequence[Question], answers_a: Sequence[str],
                answers_b: Sequence[str], progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Both orders for every question; `verdict` is A's result: win, loss or tie."""
    rows = []
    for index, (question, a, b) in enumerate(zip(questions, answers_a, answers_b, strict=True), 1):
        a_first = parse_verdict(client.ask(judge_prompt(question.text, a, b)))  # A is "A"
        b_first = parse_verdict(client.ask(judge_prompt(question.text, b, a)))  # A is "B"
        a_wins = a_first == "A" and b_first == "B"
        b_wins = a_first == "B" and b_first == "A"
        rows.append({"id": question.id, "question": question.text, "answer_a": a, "answer_b": b,
                     "a_first_verdict": a_first, "b_first_verdict": b_first,
                     "verdict": "win" if a_wins else "loss" if b_wins else "tie"})
        progress(f"[judge] {index}/{len(questions)} {question.id}: A {rows[-1]['verdict']} "
                 f"(A first: {a_first}, B first: {b_first})")
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    n = len(rows)
    return {f"judge/{name}_rate": sum(r["verdict"] == verdict for r in rows) / n
            for name, verdict in (("win", "win"), ("tie", "tie"), ("loss", "loss"))} | {
        "judge/questions": float(n),
        "judge/inconsistent_rate": sum(r["a_first_verdict"] != {"A": "B", "B": "A"}.get(r["b_first_verdict"], "C")
                                       for r in rows) / n}


def answers(run: Any, recipe: Any, questions: Sequence[Question], which: str, max_new_tokens: int) -> list[str]:
    """Greedy answers of the run's model (jobs.common.run_models) through its chat template, one model in memory."""
    from jobs.common.run_models import load_run_model
    from jobs.common.tokenizer import load_tokenizer
    from jobs.eval.generation import GenerationSettings, generate
    from jobs.spec.context import RankContext

    tokenizer = load_tokenizer(recipe)
    model, described = load_run_model(run, recipe, which, RankContext(run.path))
    print(f"[judge] {run.experiment}/{run.name} answers with {described}", flush=True)
    if tokenizer.chat_template:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q.text}], add_generation_prompt=True,
                                                 tokenize=False) for q in questions]
    else:
        prompts = [q.text for q in questions]
    texts = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=max_new_tokens))
    return [samples[0].strip() for samples in texts]


def record(run_a: Any, run_b: Any, rows: Sequence[dict[str, Any]], metrics: dict[str, float],
           settings: dict[str, str]) -> Path:
    """judgments.jsonl and summary.json under run A, then an MLflow run in A's experiment (best effort: the
    files are the record; an unreachable server is reported, not fatal)."""
    from jobs.spec.rundir import public_uri, timestamp, tracking_uri, write_atomic

    out = run_a.judgements / f"{run_b.name}-{timestamp()}"
    out.mkdir(parents=True)
    write_atomic(out / "judgments.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    write_atomic(out / "summary.json", json.dumps({**settings, "metrics": metrics}, indent=2) + "\n")
    uri = tracking_uri(run_a.root)
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(run_a.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(run_a.experiment)
        mlflow_run = client.create_run(experiment_id, run_name=f"judge {run_a.name} vs {run_b.name}",
                                       tags={"clusterft.stage": "judge", "clusterft.judge.a": run_a.name,
                                             "clusterft.judge.b": run_b.name})
        run_id = mlflow_run.info.run_id
        for key, value in settings.items():
            client.log_param(run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, step=0)
        client.log_artifact(run_id, str(out / "judgments.jsonl"))
        client.set_terminated(run_id)
    except Exception as err:  # noqa: BLE001 - the files hold the results; say why MLflow did not get them
        print(f"[judge] MLflow {public_uri(uri)} not updated ({type(err).__name__}: {err}); results stay in {out}",
              flush=True)
    return out
