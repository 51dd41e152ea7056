"""Where and how a run runs: the `launch` command line, recipe resolution, submission (SLURM, local, debug),
run lookup, comparison and MLflow plumbing. Imports no torch; reads `jobs.spec` freely and a stage package only
where it runs one in this process.
"""
