"""GGUF for llama.cpp (the seed's CPU inference), written from an exported HF model directory with the `gguf` package.

    from jobs.export.gguf import write_gguf, read_gguf_state_dict
    write_gguf(Path("export/v1/model"), Path("export/v1/gguf/model-q8_0.gguf"), "q8_0")
    state = read_gguf_state_dict(path, config)     # back to HF names and layout, dequantized (the parity checks)

Architectures: llama ("llama") and gpt_bigcode ("starcoder" in llama.cpp). Tensor names come from gguf's own
HF → GGUF name map; llama's q/k projections are permuted from the HF rotary layout to GGML's, as llama.cpp's converter
does (transformers undoes it when it reads a llama GGUF). Types: f16 writes every matrix as F16; q8_0 and q4_0
quantize every matrix whose rows are a whole number of 32-value blocks (others stay F16); vectors (norms, biases)
stay F32. Metadata: the hyperparameters llama.cpp reads for the architecture, and the byte-level BPE tokenizer
(tokenizer.ggml.model "gpt2": tokens, types, merges, special ids, chat template, and the name of llama.cpp's rules
that split text as the tokenizer's pre-tokenizer does). jobs/export/llama_cpp.py runs the file in llama.cpp.

Tensors are read one at a time from the safetensors shards; the writer holds the converted tensors (a quarter of
the 16-bit size for q4_0) until it writes the file, to a hidden name renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

QUANTS = ("f16", "q8_0", "q4_0")
ARCHITECTURES = {"llama": "LLAMA", "gpt_bigcode": "STARCODER"}
BLOCK = 32


def write_gguf(model_dir: Path, out_path: Path, quant: str) -> Path:
    import gguf
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"GGUF export supports {', '.join(ARCHITECTURES)}, not model_type {model_type!r}")
    if quant not in QUANTS:
        raise ValueError(f"GGUF quant {quant!r}: one of {', '.join(QUANTS)}")
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])
    layers = config["num_hidden_layers"] if model_type == "llama" else config["n_layer"]
    names = gguf.get_tensor_name_map(arch, layers)
    partial = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[arch])
    try:
        _metadata(writer, config, model_dir, quant)
        for shard in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as handle:
                for name in handle.keys():
                    target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                    if target is None:
                        raise ValueError(f"{shard.name}: no GGUF name for tensor {name}")
                    data = handle.get_tensor(name).float().numpy()
                    if model_type == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
                        heads = config["num_attention_heads"]
                        if name.endswith("k_proj.weight"):
                            heads = config.get("num_key_value_heads") or heads
                        data = permute_rotary(data, heads)
                    _add_tensor(writer, target, data, quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out_path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return out_path


def permute_rotary(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary layout (halves) → GGML's (interleaved pairs), per head, as llama.cpp's converter permutes q and k."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def unpermute_rotary(weights: np.ndarray, heads: int) -> np.ndarray:
    return (weights.reshape(heads, weights.shape[0] // heads // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _add_tensor(writer: Any, name: str, data: np.ndarray, quant: str) -> None:
    import gguf

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif quant == "f16" or data.shape[-1] % BLOCK:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType.Q8_0 if quant == "q8_0" else gguf.GGMLQuantizationType.Q4_0
        writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)


def _metadata(writer: Any, config: dict[str, Any], model_dir: Path, quant: str) -> None:
    import gguf

    writer.add_name(model_dir.parent.parent.parent.name if model_dir.name == "model" else model_dir.name)
    file_types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                  "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
    writer.add_file_type(file_types[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if config["model_type"] == "llama":
        heads = config["num_attention_heads"]
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
            "rope_theta", 10000.0)))
        writer.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // heads)
    else:
        writer.add_context_length(config["n_positions"])
        writer.add_embedding_length(config["n_embd"])
        writer.add_block_count(config["n_layer"])
        writer.add_feed_forward_length(config.get("n_inner") or 4 * config["n_embd"])
        writer.add_head_count(config["n_head"])
        writer.add_head_count_kv(1 if config.get("multi_query", True) else config["n_head"])
        writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    _tokenizer(writer, model_dir, config)


def _tokenizer(writer: Any, model_dir: Path, config: dict[str, Any]) -> None:
    """The byte-level BPE vocabulary (tokens by id, their types), merges and special ids from tokenizer.json."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{model_dir}: no tokenizer.json (GGUF needs the vocabulary)")
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: a {model.get('type')} tokenizer; GGUF export writes byte-level BPE only")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
    vocab.update(special)
    size = max(config.get("vocab_size", 0), max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(llama_cpp_pre_tokenizer(tokenizer.get("pre_tokenizer"), path))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    settings = {}
    if (model_dir / "tokenizer_config.json").is_file():
        settings = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        token = settings.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if token in vocab:
            add(vocab[token])
    template = model_dir / "chat_template.jinja"
    if template.is_file():
        writer.add_chat_template(template.read_text(encoding="utf-8"))


def llama_cpp_pre_tokenizer(pre: dict[str, Any] | None, path: Path) -> str:
    """The name under which llama.cpp splits text as this tokenizer.json's pre-tokenizer does.

    llama.cpp does not read the pre-tokenizer: it applies the hard-coded rules named by `tokenizer.ggml.pre`. Its
    "default" rules keep runs of digits together, so a StarCoder tokenizer (one digit per token) would get different
    ids in llama.cpp for every number. tests/integration/test_llama_cpp.py checks the ids on real code.
    """
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}

    def is_byte_level(step: dict[str, Any]) -> bool:
        return all(step.get(key) == value for key, value in byte_level.items())

    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre or {}]
    if len(steps) == 1 and is_byte_level(steps[0]):
        return "gpt-2"
    if (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
            and is_byte_level(steps[1])):
        return "starcoder"
    print(f"[export] warning: {path}: llama.cpp has no rules known to match this pre-tokenizer; the GGUF uses its "
          "default ones, so llama.cpp may split some text differently", file=sys.stderr, flush=True)
    return "default"


def read_gguf_state_dict(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The tensors of a GGUF file written here, dequantized to float32, under their HF names and in HF layout."""
    import gguf
    import torch

    model_type = config["model_type"]
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])
    layers = config["num_hidden_layers"] if model_type == "llama" else config["n_layer"]
    names = gguf.get_tensor_name_map(arch, layers)
    reader = gguf.GGUFReader(path)
    state = {}
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        hf = _hf_name(names, tensor.name, config)
        if model_type == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"]
            if hf.endswith("k_proj.weight"):
                heads = config.get("num_key_value_heads") or heads
            data = unpermute_rotary(data, heads)
        state[hf] = torch.from_numpy(np.ascontiguousarray(data))
    embedding = "model.embed_tokens.weight" if model_type == "llama" else "transformer.wte.weight"
    if "lm_head.weight" not in state and config.get("tie_word_embeddings", True):
        state["lm_head.weight"] = state[embedding]  # tied: the file has no output tensor (llama.cpp reuses token_embd)
    return state


def _hf_name(names: Any, gguf_name: str, config: dict[str, Any]) -> str:
    """The HF tensor name whose GGUF name is `gguf_name` (the name map works one way: search the HF side)."""
    prefix = "model" if config["model_type"] == "llama" else "transformer"
    layers = config["num_hidden_layers"] if config["model_type"] == "llama" else config["n_layer"]
    candidates = _hf_candidates(prefix, layers)
    for candidate in candidates:
        if names.get_name(candidate, try_suffixes=(".weight", ".bias")) == gguf_name:
            return candidate
    raise ValueError(f"GGUF tensor {gguf_name} has no HF name here")


def _hf_candidates(prefix: str, layers: int) -> list[str]:
    if prefix == "model":
        per_layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                     "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"]
        top = ["model.embed_tokens", "model.norm", "lm_head"]
        block = "model.layers"
    else:
        per_layer = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
        top = ["transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head"]
        block = "transformer.h"
    names = [f"{t}.{s}" for t in top for s in ("weight", "bias")]
    names += [f"{block}.{i}.{m}.{s}" for i in range(layers) for m in per_layer for s in ("weight", "bias")]
    return names
