"""Hydra launcher plugin that runs outlier_lab jobs on remote SSH hosts through Fabric."""
