"""The MLflow layer every stage uses: rank 0 only, spooled to disk first, never in control of the job."""
