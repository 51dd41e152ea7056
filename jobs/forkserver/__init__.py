"""The fork server for local single-rank chains (jobs/forkserver/server.py)."""
