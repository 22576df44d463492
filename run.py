"""Command line: compose the Hydra config and run one outlier-feature analysis job (or a sweep with --multirun).
The same command as `outlier-run` (outlier_lab/commands/run.py)."""

from outlier_lab.commands.run import main

if __name__ == "__main__":
    main()
