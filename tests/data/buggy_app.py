"""A Hydra app on the real conf/ whose task has a bug (seed=0) or a user mistake (seed=1), for the failure policy."""

import sys
from pathlib import Path

import hydra

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from outlier_lab.analysis.detectors import settings_nodes  # noqa: E402
from outlier_lab.config import register_configs  # noqa: E402
from outlier_lab.errors import UserError, run_task  # noqa: E402

register_configs(settings_nodes())


def body(cfg):
    if cfg.seed == 1:
        raise UserError("seed=1 is a user mistake\nwith a second line that must not be printed")
    return 1 // 0


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg):
    return run_task(body, cfg)


if __name__ == "__main__":
    main()
