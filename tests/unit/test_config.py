"""Every YAML in every config group composes against the typed schema, and typos fail at compose time."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from outlier_lab.analysis.detectors import settings_nodes
from outlier_lab.config import register_configs
from tests.support.cli import REPO

CONF = REPO / "conf"
GROUPS = ("model", "dataset", "detector", "hardware")


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(*overrides):
    register_configs(settings_nodes())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_with(f"{group}={option}")
    assert cfg[group].name, f"{group}/{option}.yaml must set a name"
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes(name):
    cfg = compose_with(f"+experiment={name}")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def test_every_yaml_opens_with_a_comment_and_a_command():
    for path in CONF.rglob("*.yaml"):
        head = path.read_text().splitlines()[:4]
        comments = [line for line in head if line.startswith("#") and "@package" not in line]
        assert comments, f"{path} must open with a comment saying what it is"
        assert any("python " in line or "outlier-" in line for line in comments), (
            f"{path}'s comment must show the command that uses it"
        )


def test_defaults_are_the_offline_analysis():
    cfg = compose_with()
    assert (cfg.model.name, cfg.model.source, cfg.dataset.source, cfg.detector.name, cfg.hardware.name) == (
        "minilm",
        "package",
        "python_docs",
        "llm_int8",
        "local",
    )
    assert (cfg.detector.alpha, cfg.detector.min_layer_frac, cfg.detector.min_position_frac) == (6.0, 0.25, 0.06)


@pytest.mark.parametrize("override", ["detector.alpah=5", "dataset.seq_len=abc", "model.nme=x"])
def test_typos_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_with(override)


def test_unknown_keys_under_typed_groups_are_refused_even_with_plus():
    from outlier_lab.config import check_schema
    from outlier_lab.errors import UserError

    with pytest.raises(
        UserError,
        match=r"detector\.massive\.extra is not a setting.*detector\.alpah is not a "
        r"setting of detector \(did you mean detector\.alpha\?\)",
    ):
        check_schema(compose_with("+detector.massive.extra=1", "+detector.alpah=5"))
    # Free-form mappings and every option of every group, experiments included, stay valid.
    check_schema(compose_with("+model.config_overrides.num_hidden_layers=2"))
    for group in GROUPS + ("analysis",):
        for option in options(group):
            check_schema(compose_with(f"{group}={option}"))
    for experiment in options("experiment"):
        check_schema(compose_with(f"+experiment={experiment}"))
