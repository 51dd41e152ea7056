"""The contract between launcher and jobs, torch-free: recipe schema, Plan, RunDir, the stage registry, errors,
rank context, redaction. Everything imports it; it imports nothing of ours outside itself."""
