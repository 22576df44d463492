"""Hydra sweeper plugin that applies outlier_lab's failure policy (one line, exit code 2) to every sweep."""
