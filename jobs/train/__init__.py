"""The train stage: TRL SFTTrainer with verified checkpoints, FSDP state handling and MFU (`stage.train`)."""
