"""The export stage: versioned exports — streaming LoRA merge, ZeRO-3 consolidation, adapter mixing, GGUF, model
card (`stage.export`)."""
