"""A command line's overrides are checked against conf/ and the schema before Hydra composes."""

import pytest

from outlier_lab.commands.compose import check_overrides, overrides_of
from outlier_lab.config import unknown_setting
from outlier_lab.errors import UserError


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model=qwen3-30b"], "model=qwen3-30b is not an option of model (did you mean model=qwen3_30b?)"),
        (["model=olmoe,qwen3-30b"], "model=qwen3-30b is not an option of model (did you mean model=qwen3_30b?)"),
        (
            ["hydra/launcher=slurmm"],
            "hydra/launcher=slurmm is not an option of hydra/launcher (did you mean hydra/launcher=slurm?)",
        ),
        (
            ["+experiment=moe_swep"],
            "+experiment=moe_swep is not an option of experiment (did you mean +experiment=moe_sweep?)",
        ),
        (
            ["detector.massive.minabs=3"],
            "detector.massive.minabs is not a setting of detector.massive (did you mean detector.massive.min_abs?)",
        ),
        (["engine=zzz"], "engine=zzz is not an option of engine (options: auto, resident, streamed)"),
    ],
)
def test_a_misspelt_option_or_setting_names_the_closest(overrides, message):
    with pytest.raises(UserError) as raised:
        check_overrides(["seed=1", *overrides])
    assert str(raised.value) == message


def test_valid_overrides_pass():
    check_overrides(
        [
            "model=local",
            "model.path=/x",
            "dataset.seq_len=8",
            "detector.layers=[0,1]",
            "~hardware",
            "+experiment=smoke",
            "+anything.new=1",
            "hydra.launcher.dry_run=true",
            "hydra/launcher=slurm",
            "detector=llm_int8_massive",
            "detector.massive.min_abs=50",
            "model=olmoe,qwen3",
        ]
    )


def test_only_overrides_are_checked():
    assert overrides_of(["--multirun", "-cn", "config", "model=x", "~hardware", "--cfg", "job"]) == [
        "model=x",
        "~hardware",
    ]


def test_unknown_setting_stops_at_free_leaves():
    assert unknown_setting("dataset.seq_len") is None and unknown_setting("seed") is None
    assert unknown_setting("foo") == (
        "foo is not a setting of the run config (its settings: model, dataset, detector, "
        "hardware, analysis, engine, device, seed, progress, report)"
    )
