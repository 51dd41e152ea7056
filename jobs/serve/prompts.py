"""What `launch serve` feeds the model: the prompt of a completion (plain, or fill-in-the-middle when a `suffix` is
given, as editor plugins send it) or of a chat (the tokenizer's chat template), as token ids that fit the context.

    prompter = Prompter(tokenizer, context_length=2048)
    prompt = prompter.completion(request)   # Prompt(ids, end_ids, max_tokens); ApiError(400) naming the field
                                            # (a prompt of token ids is taken as it is)
    prompt = prompter.chat(request)         # ... ending at the template's end-of-turn token too

FIM is the eval's rule (jobs.eval.fim_eval.psm_prompt: PSM order with the tokenizer's own sentinels, StarCoder's
<fim_prefix>/<fim_suffix>/<fim_middle> and the other families of jobs.prepare.fim). Prompts are encoded without
added special tokens, as the eval stage encodes them. No torch here: tests/unit/test_serve.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.eval.fim_eval import psm_prompt
from jobs.serve.protocol import ApiError, ChatRequest, CompletionRequest, Sampling

# Chat templates close a turn with one of these; generation stops there as at the end-of-sequence token.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|EOT|>")


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    end_ids: tuple[int, ...]    # tokens that end the answer besides the model's end-of-sequence
    max_tokens: int             # the request's, or what is left of the context


class Prompter:
    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        vocab = tokenizer.get_vocab()
        self.end_of_turn = tuple(vocab[token] for token in END_OF_TURN if token in vocab)

    def completion(self, request: CompletionRequest) -> Prompt:
        if isinstance(request.prompt, list):  # token ids, as the vLLM engine's front sends them
            outside = [i for i in request.prompt if i >= len(self.tokenizer)]
            if outside:
                raise ApiError(400, f"prompt: token id {outside[0]} is not in the vocabulary ({len(self.tokenizer)} "
                               "tokens)", "prompt")
            return self._fit(list(request.prompt), (), request.sampling, "prompt")
        text = request.prompt
        if request.suffix is not None:
            try:
                text = psm_prompt(request.prompt, request.suffix, self.tokenizer)
            except ValueError as err:
                raise ApiError(400, f"suffix: fill-in-the-middle is not available: {err}", "suffix") from None
        return self._fit(self.encode(text), (), request.sampling, "prompt")

    def chat(self, request: ChatRequest) -> Prompt:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, "messages: this model's tokenizer has no chat template; use /v1/completions",
                           "messages")
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(list(request.messages), tokenize=False,
                                                      add_generation_prompt=True)
        except TemplateError as err:  # e.g. a template that wants user and assistant turns to alternate
            raise ApiError(400, f"messages: the chat template refused them: {err}", "messages") from None
        return self._fit(self.encode(text), self.end_of_turn, request.sampling, "messages")

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fit(self, ids: list[int], end_ids: tuple[int, ...], sampling: Sampling, field: str) -> Prompt:
        room = self.context_length - len(ids)
        if room < 1:
            raise ApiError(400, f"{field}: {len(ids)} tokens, the model's context is {self.context_length}", field)
        if sampling.max_tokens is not None and sampling.max_tokens > room:
            raise ApiError(400, f"max_tokens: {sampling.max_tokens} does not fit: the prompt takes {len(ids)} of the "
                           f"model's {self.context_length} tokens of context ({room} left)", "max_tokens")
        return Prompt(ids, end_ids, sampling.max_tokens or room)
