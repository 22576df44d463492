"""Hydra launcher plugin that submits outlier_lab jobs to Slurm through submitit, sized per job from its estimate."""
