"""A recipe's tokenizer: where it comes from and loading it (transformers' AutoTokenizer, no modeling code).

    from jobs.common.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(recipe)      # the recipe's tokenizer, or the pretrained model's own, pad token set
"""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer

from jobs.common.hub import model_directory
from jobs.spec.schema import Recipe


def tokenizer_source(recipe: Recipe) -> tuple[str, str | None]:
    """Where the recipe's tokenizer comes from: (directory or hub id, revision). A pretrained model's own tokenizer
    is read from its snapshot, which the prepare stage fetched."""
    source = recipe.model.tokenizer or recipe.model.name_or_path
    if source != recipe.model.name_or_path:
        return source, None
    if recipe.model.init == "pretrained":
        return str(model_directory(source, recipe.model.revision)), None
    return source, recipe.model.revision


def load_tokenizer(recipe: Recipe) -> Any:
    source, revision = tokenizer_source(recipe)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision,
                                              trust_remote_code=recipe.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # as the seeds do for StarCoder and Llama
    return tokenizer
