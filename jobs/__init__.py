"""What runs on a node: one package per stage over a torch-free contract (`jobs.spec`).

    spec/         the contract the launcher and every stage share; imports nothing of ours above it, and no torch
    common/       model loading, architecture checks, HF/safetensors file helpers, build-once
    prepare/ train/ export/ eval/ track/   one package per stage (track: the MLflow layer every stage uses)
    interactive/  `launch generate` and `launch judge`, run in the caller's process

Nothing here imports `launchers` (tests/unit/test_layout.py checks it).
"""
