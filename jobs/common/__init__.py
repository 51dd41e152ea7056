"""What several stages share: model and tokenizer loading, LoRA-target checks, safetensors/HF-file helpers, and
rank-0-builds-once."""
