"""Command line: compose the Hydra config and run one outlier-feature analysis job (or a sweep with --multirun)."""
import hydra
from omegaconf import DictConfig

from outlier_lab.analysis.detectors import settings_nodes
from outlier_lab.config import register_configs

register_configs(settings_nodes())


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from outlier_lab.pipeline import main as run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
