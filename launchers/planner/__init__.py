"""The planner: memory, disk, time and cost of a recipe before it is queued (`launch plan`)."""
