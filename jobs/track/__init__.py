"""The MLflow layer every stage uses: rank 0 only, spooled to disk first, never in control of the job.

    tracker.py        Tracker: what a stage logs, as lines in the spool (the one entry point of the stages)
    spool.py          the spool: its file format and the on-disk queue (append, offsets, lock); no MLflow
    sender.py         Sender: replays a spool to an MLflow server, in order, never twice (also `launch sync`)
    sender_thread.py  SenderThread: a Sender in the background while a stage runs, with a bounded flush
    launch_info.py    the launch's tags and params (recipe, plan, job ids, restarts)
    system.py         SystemMonitor: system/* metrics and the peak memory of the train stage
    provenance.py     git commit, model manifest (sizes, sha256), redacted copies of the files sent

Imports run one way: tracker → the others; sender_thread → sender → spool. MLflow, torch and pynvml are imported
lazily: `launch sync` on a login node uses spool and sender without torch.
"""
