"""Reporting from results files only: per-run report and heatmap, explanations, sweep comparison, Hydra callback."""
