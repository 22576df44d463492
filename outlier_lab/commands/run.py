"""`outlier-run` (and `python run.py`): compose the Hydra config and run one analysis job, or a sweep with
--multirun."""

import sys

import hydra
from omegaconf import DictConfig

from outlier_lab.analysis.detectors import settings_nodes
from outlier_lab.commands import CONF_DIR
from outlier_lab.commands.compose import check_overrides, overrides_of
from outlier_lab.config import register_configs
from outlier_lab.errors import exit_on_user_error

register_configs(settings_nodes())


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig):
    from outlier_lab.pipeline import main as run_job

    return run_job(cfg)


def main() -> None:
    # A misspelt option or setting is one line and exit 2 here, before Hydra prints its option list and search path.
    with exit_on_user_error():
        check_overrides(overrides_of(sys.argv[1:]))
    _app()


if __name__ == "__main__":
    main()
