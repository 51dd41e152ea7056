"""Starting a run's stages: the runners (SLURM chain, local, debug), sbatch parameters, containers, and the
callable every rank runs (`stage.Stage`)."""
