"""A model's shape from its config.json alone (no torch): parameter counts, its largest module, the linear layers
LoRA can target — what the planner computes memory, disk and FLOPs from.

    shape = model_shape(json.loads(Path("recipes/starcoder15b/config.json").read_text()))
    shape.parameters, shape.largest_module, shape.lora_parameters(r=32, targets=["c_attn", "c_proj", "c_fc"])

Architectures: gpt_bigcode (StarCoder), llama (Llama, Code Llama), gemma, codegen — the catalog's. The counts
equal transformers' own for every shipped config (tests/unit/test_planner_shape.py builds each on the meta device).
Defaults for keys a config leaves out are the transformers config classes' defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.spec.errors import UserError

ARCHITECTURES = ("gpt_bigcode", "llama", "gemma", "codegen")


@dataclass(frozen=True)
class Linear:
    name: str  # the module's own name, as LoRA's target_modules match it (c_attn, q_proj, ...)
    inputs: int
    outputs: int
    bias: bool

    @property
    def parameters(self) -> int:
        return self.inputs * self.outputs + (self.outputs if self.bias else 0)


@dataclass(frozen=True)
class ModelShape:
    architecture: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    positions: int  # learned position embeddings (0: rotary)
    tied: bool  # the output head shares the token embeddings
    gated_mlp: bool  # gate·up (SwiGLU/GeGLU) rather than one up-projection; also RMSNorm, SDPA reading k/v per group
    attention_dropout: float
    residual_dropout: float
    layer_linears: tuple[Linear, ...]  # one decoder layer's linear modules
    layer_other: int  # one layer's parameters outside its linears (norms)
    final_other: int  # the final norm's
    head_bias: bool  # the output head has a bias (CodeGen)

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden + self.positions * self.hidden

    @property
    def layer_parameters(self) -> int:
        return sum(linear.parameters for linear in self.layer_linears) + self.layer_other

    @property
    def head_parameters(self) -> int:
        """The output head's own parameters (0 when tied, but for a bias)."""
        return (0 if self.tied else self.vocab * self.hidden) + (self.vocab if self.head_bias else 0)

    @property
    def parameters(self) -> int:
        return self.embedding_parameters + self.layers * self.layer_parameters + self.final_other + self.head_parameters

    @property
    def linear_parameters(self) -> int:
        """The weights QLoRA quantizes to 4 bits: every decoder-layer linear (the head and embeddings stay 16-bit)."""
        return self.layers * sum(linear.inputs * linear.outputs for linear in self.layer_linears)

    @property
    def matmul_parameters(self) -> int:
        """The weights of every matrix multiply, the output head included (tied or not): FLOPs are 6 per token each."""
        return self.linear_parameters + self.vocab * self.hidden

    @property
    def largest_module(self) -> int:
        """The parameters of the largest single module (DeepSpeed's "largest layer": what ZeRO-3 gathers at once)."""
        modules = [self.vocab * self.hidden, self.positions * self.hidden, self.head_parameters]
        modules += [linear.parameters for linear in self.layer_linears]
        return max(modules)

    def lora_targets(self, targets: list[str] | str) -> list[Linear]:
        """The layer linears LoRA's target_modules select (PEFT matches a module's name; all-linear takes every one
        but the output head)."""
        if targets == "all-linear":
            return list(self.layer_linears)
        return [linear for linear in self.layer_linears if linear.name in targets]

    def lora_parameters(self, r: int, targets: list[str] | str) -> int:
        """Trainable LoRA parameters: r·(in + out) per targeted linear, in every layer."""
        return self.layers * sum(r * (linear.inputs + linear.outputs) for linear in self.lora_targets(targets))


def model_shape(config: dict[str, Any]) -> ModelShape:
    kind = config.get("model_type")
    if kind == "gpt_bigcode":
        return _gpt_bigcode(config)
    if kind in ("llama", "gemma"):
        return _llama_like(config, kind)
    if kind == "codegen":
        return _codegen(config)
    raise UserError(f"the planner knows the {', '.join(ARCHITECTURES)} architectures, not {kind!r}: "
                    "launch with --force to submit without a plan")


def _gpt_bigcode(c: dict[str, Any]) -> ModelShape:
    h, heads = c.get("n_embd", 768), c.get("n_head", 12)
    inner = c.get("n_inner") or 4 * h
    head_dim = h // heads
    kv_heads = 1 if c.get("multi_query", True) else heads
    linears = (Linear("c_attn", h, h + 2 * kv_heads * head_dim, True), Linear("c_proj", h, h, True),
               Linear("c_fc", h, inner, True), Linear("c_proj", inner, h, True))
    return ModelShape("gpt_bigcode", c.get("n_layer", 12), h, heads, kv_heads, head_dim, inner,
                      c.get("vocab_size", 50257), c.get("n_positions", 1024), c.get("tie_word_embeddings", True),
                      False, c.get("attn_pdrop", 0.1), c.get("resid_pdrop", 0.1), linears, 4 * h, 2 * h, False)


def _llama_like(c: dict[str, Any], kind: str) -> ModelShape:
    gemma = kind == "gemma"
    h = c.get("hidden_size", 3072 if gemma else 4096)
    heads = c.get("num_attention_heads", 16 if gemma else 32)
    kv_heads = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or h // heads
    inner = c.get("intermediate_size", 24576 if gemma else 11008)
    bias, mlp_bias = c.get("attention_bias", False), c.get("mlp_bias", False)
    linears = (Linear("q_proj", h, heads * head_dim, bias), Linear("k_proj", h, kv_heads * head_dim, bias),
               Linear("v_proj", h, kv_heads * head_dim, bias), Linear("o_proj", heads * head_dim, h, bias),
               Linear("gate_proj", h, inner, mlp_bias), Linear("up_proj", h, inner, mlp_bias),
               Linear("down_proj", inner, h, mlp_bias))
    return ModelShape(kind, c.get("num_hidden_layers", 28 if gemma else 32), h, heads, kv_heads, head_dim, inner,
                      c.get("vocab_size", 256000 if gemma else 32000), 0, c.get("tie_word_embeddings", gemma), True,
                      c.get("attention_dropout", 0.0), 0.0, linears, 2 * h, h, False)


def _codegen(c: dict[str, Any]) -> ModelShape:
    h, heads = c.get("n_embd", 4096), c.get("n_head", 16)
    inner = c.get("n_inner") or 4 * h
    linears = (Linear("qkv_proj", h, 3 * h, False), Linear("out_proj", h, h, False),
               Linear("fc_in", h, inner, True), Linear("fc_out", inner, h, True))
    return ModelShape("codegen", c.get("n_layer", 28), h, heads, heads, h // heads, inner, c.get("vocab_size", 50400),
                      0, c.get("tie_word_embeddings", False), False, c.get("attn_pdrop", 0.0),
                      c.get("resid_pdrop", 0.0), linears, 2 * h, 2 * h, True)
