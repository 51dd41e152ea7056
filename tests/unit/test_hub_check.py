"""The launch-time hub check against a real HTTP stand-in on loopback: a missing, gated or unreadable model, a
revision that does not exist, a hub that cannot be reached, each exit 2 in one line with nothing written; a
readable model's revision is pinned to its commit. Offline (HF_HUB_OFFLINE=1) the cache decides. Where the hub
cannot be asked, a dry run warns and goes on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest

from tests.hub_standin import EMPTY_SAFETENSORS, HubStandIn
from tests.unit.launch_harness import CliResult, assert_one_error_line

FILES = {"config.json": b'{"model_type": "gpt_bigcode"}', "model.safetensors": EMPTY_SAFETENSORS}
GRANTED = "hf_granted_token_123456"
PRETRAINED = ("lora", "tiny-starcoder", "model.init=pretrained")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """The stand-in, online, with a public, a gated and a weightless model; no token anywhere."""
    with HubStandIn() as standin:
        standin.add_model("org/tiny", FILES)
        standin.add_model("org/gated", FILES, gated_for={GRANTED})
        standin.add_model("org/bins", {"config.json": FILES["config.json"], "pytorch_model.bin": b"0"})
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub_constants, "ENDPOINT", standin.url)
        monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        yield standin


def run(launch: Callable[..., CliResult], repo: str, *extra: str) -> CliResult:
    return launch(*PRETRAINED, f"model.name_or_path={repo}", *extra, "--dry-run")


def test_a_public_model_is_pinned_to_its_commit(hub: HubStandIn, launch: Callable[..., CliResult]) -> None:
    result = run(launch, "org/tiny")
    assert result.code == 0, result.err
    sha = hub.repos["org/tiny"].sha
    assert f"model:       org/tiny @ {sha} (the prepare stage fetches it" in result.out
    assert f"org/tiny@main is commit {sha}" in result.err
    assert not hub.downloads()  # the check reads the model's info, never its files


def test_a_commit_is_kept(hub: HubStandIn, launch: Callable[..., CliResult]) -> None:
    sha = hub.repos["org/tiny"].sha
    result = run(launch, "org/tiny", f"model.revision={sha}")
    assert result.code == 0 and f"org/tiny @ {sha}" in result.out and "is commit" not in result.err


@pytest.mark.parametrize(("repo", "token", "expected"), [
    ("org/gated", None, "org/gated is gated: accept its terms on the model's page and set HF_TOKEN"),
    ("org/gated", "hf_not_granted_0987654321", "org/gated is gated and your token has no access"),
    ("org/nope", None, "no model org/nope on the hub (check the name; if it is private, set HF_TOKEN"),
    ("org/bins", None, "has no *.safetensors weights"),
])
def test_an_unreadable_model_is_refused_at_launch(hub: HubStandIn, launch: Callable[..., CliResult],
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   repo: str, token: str | None, expected: str) -> None:
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    line = assert_one_error_line(run(launch, repo))
    assert f"override model.name_or_path={repo}: " in line and expected in line
    assert token is None or token not in line
    assert not (tmp_path / "runs").exists()


def test_a_granted_token_reads_a_gated_model(hub: HubStandIn, launch: Callable[..., CliResult],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", GRANTED)
    result = run(launch, "org/gated")
    assert result.code == 0 and f"org/gated @ {hub.repos['org/gated'].sha}" in result.out
    assert GRANTED not in result.out + result.err


def test_a_revision_that_does_not_exist(hub: HubStandIn, launch: Callable[..., CliResult]) -> None:
    line = assert_one_error_line(run(launch, "org/tiny", "model.revision=v9"))
    assert "override model.revision=v9: model.revision: org/tiny has no revision 'v9'" in line


def submit(launch: Callable[..., CliResult], repo: str) -> CliResult:
    return launch(*PRETRAINED, f"model.name_or_path={repo}", "-p", "gpu")


def test_a_hub_that_cannot_be_reached(hub: HubStandIn, launch: Callable[..., CliResult],
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A submission stops; a dry run says the model is not checked and goes on."""
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # discard: nothing listens
    line = assert_one_error_line(submit(launch, "org/tiny"))
    assert "cannot reach the hub to check org/tiny" in line and "HF_HUB_OFFLINE=1" in line
    assert not (tmp_path / "runs").exists()
    dry = run(launch, "org/tiny")
    assert dry.code == 0 and "cannot reach the hub" in dry.err
    assert "(--dry-run goes on; a submission stops here)" in dry.err
    assert "model:       org/tiny @ main (" in dry.out  # not pinned


def test_offline_the_cache_decides(launch: Callable[..., CliResult], hub_cache: Path) -> None:
    line = assert_one_error_line(submit(launch, "org/tiny"))
    assert "org/tiny@main is not in the hub cache" in line and "HF_HUB_OFFLINE=1 is set" in line
    assert run(launch, "org/tiny").code == 0
    result = launch("qlora", "starcoder15b", "--dry-run")
    cached = (hub_cache / "models--bigcode--starcoder" / "refs" / "main").read_text()
    assert result.code == 0 and f"bigcode/starcoder @ {cached}" in result.out
