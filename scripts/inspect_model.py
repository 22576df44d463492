"""Print a model's discovered blocks and measurement sites from its config alone (meta device, no weights)."""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from outlier_lab.analysis.detectors import settings_nodes  # noqa: E402
from outlier_lab.config import register_configs  # noqa: E402

register_configs(settings_nodes())


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from outlier_lab.errors import run_task
    from outlier_lab.reporting.inspection import describe_model

    run_task(describe_model, cfg)


if __name__ == "__main__":
    main()
