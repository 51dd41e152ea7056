"""The launch-time check of a hub model: found, readable with this token, at a revision that exists, with
safetensors weights — on the login node, before anything waits in a queue. The revision is pinned to its commit.

    pinned = pin_hub_model(resolved)    # a Resolved whose model.revision is a commit; exit 2 with one line if not

Online it asks the hub (HF_ENDPOINT; the token of HF_TOKEN or `hf auth login`); with HF_HUB_OFFLINE=1 the model
must already be in the local hub cache, and the revision is the cached one. A local directory or a random init is
not a hub model and passes as it is. The prepare stage then fetches this exact commit once (jobs.common.hub) and
every later stage reads it offline. Imports huggingface_hub (torch-free), never transformers.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from jobs.common.hub import HUB_PATTERNS, is_hub_id
from jobs.spec.errors import UserError
from launchers.recipe.load import Resolved

COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_TIMEOUT_S = 30
TOKEN_HINT = "set HF_TOKEN (or run `hf auth login`) where you launch and where the prepare stage runs"


class Unchecked(UserError):
    """The hub could not be asked (unreachable, or offline without the model cached): not the recipe's fault."""


def pin_hub_model(resolved: Resolved, dry_run: bool = False) -> Resolved:
    """`resolved` with model.revision pinned to the commit it names, after checking the model can be fetched. A
    dry run goes on, with a warning, where the hub cannot be asked; a submission stops."""
    model = resolved.recipe.model
    if model.init != "pretrained" or not is_hub_id(model.name_or_path):
        return resolved
    from huggingface_hub import constants

    where = resolved.where("model", "name_or_path")
    try:
        if constants.HF_HUB_OFFLINE:
            commit = _cached_commit(model.name_or_path, model.revision, where)
        else:
            commit = _hub_commit(model.name_or_path, model.revision, where, resolved.where("model", "revision"))
    except Unchecked as err:
        if not dry_run:
            raise
        print(f"warning: {err} (--dry-run goes on; a submission stops here)", file=sys.stderr)
        return resolved
    if model.tokenizer and is_hub_id(model.tokenizer) and not constants.HF_HUB_OFFLINE:
        tokenizer_where = resolved.where("model", "tokenizer")
        _hub_commit(model.tokenizer, None, tokenizer_where, tokenizer_where, weights=False)
    pinned_model = model.model_copy(update={"revision": commit})
    return dataclasses.replace(resolved, recipe=resolved.recipe.model_copy(update={"model": pinned_model}))


def _hub_commit(repo: str, revision: str | None, where: str, revision_where: str, weights: bool = True) -> str:
    """The commit `revision` names on the hub, or exit 2 with what to do."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import get_token

    has_token = get_token() is not None
    try:
        info = HfApi().model_info(repo, revision=revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        if has_token:
            raise UserError(f"{where}: {repo} is gated and your token has no access: request it on the model's "
                            "page, then launch again") from None
        raise UserError(f"{where}: {repo} is gated: accept its terms on the model's page and {TOKEN_HINT}") from None
    except RevisionNotFoundError:
        raise UserError(f"{revision_where}: model.revision: {repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        hint = "check the name" if has_token else f"check the name; if it is private, {TOKEN_HINT}"
        raise UserError(f"{where}: no model {repo} on the hub ({hint})") from None
    except HfHubHTTPError as err:
        raise UserError(f"{where}: the hub answered {_status(err)} for {repo}: try again, or fetch it where the hub "
                        "is reachable and launch with HF_HUB_OFFLINE=1") from None
    except Exception as err:  # refused, no route, timed out: huggingface_hub lets its HTTP client's errors through
        if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
            raise Unchecked(f"{where}: cannot reach the hub to check {repo} ({type(err).__name__}): launch where it "
                            "is reachable, or fetch the model first and launch with HF_HUB_OFFLINE=1") from None
        raise
    files = [sibling.rfilename for sibling in info.siblings or []]
    if weights and not any(name.endswith(".safetensors") for name in files):
        raise UserError(f"{where}: {repo}@{info.sha} has no *.safetensors weights (the run loads only safetensors; "
                        f"files: {', '.join(files[:8]) or 'none'})")
    assert info.sha is not None
    if revision != info.sha:
        print(f"hub: {repo}@{revision} is commit {info.sha}: the run is pinned to it", file=sys.stderr)
    return info.sha


def _cached_commit(repo: str, revision: str | None, where: str) -> str:
    """HF_HUB_OFFLINE=1: the commit of `revision` in the local cache, with its weights, or exit 2."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise Unchecked(f"{where}: {repo}@{revision} is not in the hub cache {constants.HF_HUB_CACHE} and "
                        "HF_HUB_OFFLINE=1 is set: unset it to let the prepare stage fetch the model, or fetch it "
                        f"first (hf download {repo} --revision {revision})") from None
    if not any(snapshot.glob("*.safetensors")):
        raise UserError(f"{where}: the cached {repo}@{revision} ({snapshot}) has no *.safetensors weights: fetch "
                        f"them (hf download {repo} --revision {revision})")
    if not COMMIT.fullmatch(snapshot.name):
        raise UserError(f"{where}: the cached {repo} is not a hub snapshot ({snapshot})")
    return snapshot.name


def _status(err: Exception) -> str:
    response = getattr(err, "response", None)
    return f"HTTP {response.status_code}" if response is not None else "an error"
