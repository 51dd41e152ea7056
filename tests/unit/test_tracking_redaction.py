"""Secrets never reach MLflow (jobs.spec.redaction).

- keys named like secrets are redacted whole; words are split, so tokenizer/max_tokens/author are not secrets
- values shaped like tokens are redacted wherever they appear (params, tags, YAML, JSON, logs, sbatch scripts)
- the tracker's parent run, against a real sqlite MLflow store: the params a person compares (short), a
  10,000-character description with a token in it redacted in recipe.yaml (an artifact), sbatch scripts redacted,
  the secret nowhere in the store, its artifacts or the spool

    .venv/bin/python -m pytest tests/unit/test_tracking_redaction.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.spec.redaction import REDACTED, is_secret_key, redact_text, redact_tree, redact_value

HF = "hf_" + "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0"  # 30 characters after the prefix: shaped like a Hugging Face token


@pytest.mark.parametrize(("key", "secret"), [
    ("hf_token", True), ("HF_TOKEN", True), ("apiKey", True), ("api_key", True), ("apikey", True),
    ("db.password", True), ("MLFLOW_TRACKING_PASSWORD", True), ("client_secret", True), ("auth", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("credentials.user", True), ("Authorization", True), ("passwd", True),
    ("model.tokenizer", False), ("data.max_tokens", False), ("plan.tokens_per_step", False), ("author", False),
    ("cache_key", False), ("recipe.description", False), ("training.learning_rate", False),
])
def test_secret_keys_by_word(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(("text", "leaked"), [
    (f"description={HF}", HF),
    ("export OPENAI=sk-proj-" + "a1B2c3D4e5F6g7H8i9J0k1L2", "a1B2c3D4e5F6g7H8i9J0k1L2"),
    ("git clone https://ghp_" + "A" * 36 + "@github.com/x/y", "ghp_" + "A" * 36),
    ("aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    ("MLFLOW_TRACKING_URI=https://alice:s3cr3t-pw@mlflow.example.com/", "s3cr3t-pw"),
    ("curl -H 'Authorization: Bearer abcdefghijklmnop0123456789'", "abcdefghijklmnop0123456789"),
    ("--hf-token abcdef123456 --lr 1e-4", "abcdef123456"),
    ('{"hf_token": "plain-words-here", "x": 1}', "plain-words-here"),
    ("password: hunter2, user: bob", "hunter2"),
    ("signing_key=aB3dE5fG7hI9jK1lM3nO5pQ7", "aB3dE5fG7hI9jK1lM3nO5pQ7"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "dozjgNryP4J"),
])
def test_secret_values_by_shape(text: str, leaked: str) -> None:
    redacted = redact_text(text)
    assert leaked not in redacted and REDACTED in redacted


@pytest.mark.parametrize("text", [
    "step 3/30  train/loss=7.1  train/learning_rate=0.003",
    "tokenizer: recipes/assets/tokenizer",
    "the token was lost, the password too",
    "cache_key=1a2b3c4d5e6f7a8b9c0d",  # a hash: hex, not a secret
    "x --max-tokens 12 y",
    "[prepare] reusing /runs/cache/prepared/fa2b33f863533ad67de5",
    "model.name_or_path: bigcode/starcoderbase-1b",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_structures() -> None:
    assert redact_value("recipe.description", f"uses {HF} daily") == f"uses {REDACTED} daily"
    assert redact_value("hf_token", "anything") == REDACTED
    assert redact_value("hf_token", None) is None  # nothing to hide, and the key says it is unset
    assert redact_tree({"credentials": {"user": "bob", "n": 1}, "list": [HF, "ok"], "token": ""}) == {
        "credentials": {"user": REDACTED, "n": REDACTED}, "list": [REDACTED, "ok"], "token": ""}


def test_the_parent_run_holds_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from jobs.spec.context import RankContext
    from jobs.track.tracker import Tracker
    from launchers.recipe.load import resolve
    from launchers.recipe.plan import make_plan

    long_description = f"token {HF} " + "x" * 10_000
    resolved = resolve("lora", "tiny-starcoder", [f"description={long_description}"])
    run = tmp_path / "runs" / "tiny-starcoder" / "secret"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(f"description: {long_description}\n")
    (run / "launch.json").write_text(json.dumps({"argv": ["launch", f"description={HF}"], "jobs": {},
                                                 "stages": ["train"], "container": "none"}))
    (run / "submitit").mkdir()
    (run / "submitit" / "123_submission.sh").write_text(f"#!/bin/bash\n#SBATCH --nodes=1\nexport HF_TOKEN={HF}\n")
    monkeypatch.setenv("CLUSTERFT_SYSTEM_METRICS_S", "0")
    tracker = Tracker(RankContext(run_dir=run), "train", resolved.recipe, make_plan(resolved))
    tracker.start()
    tracker.log_metrics({"train/loss": 1.0}, 1)
    tracker.finish("FINISHED")

    ids = json.loads((run / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    parent = client.get_run(ids["parent"])
    redacted = long_description.replace(HF, REDACTED)
    assert parent.data.params["learning_rate"] == str(resolved.recipe.training.learning_rate)
    assert all(len(v) <= 100 for v in parent.data.params.values())
    assert parent.data.tags["clusterft.recipe"] == "tiny-starcoder/lora"
    assert {a.path for a in client.list_artifacts(ids["parent"])} >= {"recipe.yaml", "launch.json"}
    local = Path(client.download_artifacts(ids["parent"], "recipe.yaml", str(tmp_path / "download")))
    assert local.read_text() == f"description: {redacted}\n"
    sbatch = Path(client.download_artifacts(ids["parent"], "sbatch/123_submission.sh", str(tmp_path / "download")))
    assert sbatch.read_text() == f"#!/bin/bash\n#SBATCH --nodes=1\nexport HF_TOKEN={REDACTED}\n"

    for place in (tmp_path / "runs" / "mlflow.db", *(tmp_path / "runs" / "mlartifacts").rglob("*"),
                  *(run / "mlflow-spool").rglob("*"), run / "mlflow.json"):
        if place.is_file():
            assert HF.encode() not in place.read_bytes(), f"the secret leaked into {place}"
