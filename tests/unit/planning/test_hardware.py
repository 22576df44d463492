"""The printed plan shows only the figures that apply to where the job runs."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from outlier_lab.analysis.detectors import settings_nodes
from outlier_lab.config import register_configs
from outlier_lab.planning import format_plan, plan
from tests.support.cli import REPO

CONF = REPO / "conf"


@pytest.mark.parametrize("hardware,shows_floor", [("local", False), ("auto", True)])
def test_ram_floor_is_printed_only_for_a_remote_host(hardware, shows_floor):
    register_configs(settings_nodes())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hardware={hardware}", "dataset.num_sequences=8", "dataset.seq_len=32"])
    text = format_plan(plan(cfg))
    assert ("RAM floor" in text) is shows_floor, text
    assert "required (x" in text and "(headroom: " in text  # the factor and where it comes from
