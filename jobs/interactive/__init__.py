"""`launch generate` and `launch judge`: a run's model used in the caller's process."""
