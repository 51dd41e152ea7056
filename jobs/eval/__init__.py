"""The eval stage: HumanEval pass@k in a sandbox, FIM exact match, held-out loss; transformers or vLLM
generation (`stage.evaluate`)."""
