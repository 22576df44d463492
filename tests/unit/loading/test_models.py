"""Checkpoint location, dtypes and the shipped hub configs, without loading a model."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from outlier_lab.errors import UserError
from outlier_lab.loading.models import HF_CONFIGS_DIR, checkpoint_location, resolve_dtype, shipped_config_path
from tests.support.cli import REPO


def model_cfg(**fields):
    return OmegaConf.create(
        dict(dict(name="m", source="hub", path="org/m", revision="main", config_file=None), **fields)
    )


def test_a_local_dir_without_config_json_is_refused(tmp_path):
    with pytest.raises(UserError, match="is not a checkpoint directory"):
        checkpoint_location(model_cfg(source="local", path=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    assert checkpoint_location(model_cfg(source="local", path=str(tmp_path)))[0] == str(tmp_path.resolve())


def test_unknown_source_and_dtype_are_user_errors():
    with pytest.raises(UserError, match="model.source='ftp' is not one of"):
        checkpoint_location(model_cfg(source="ftp"))
    with pytest.raises(UserError, match="model.dtype='int3'"):
        resolve_dtype("int3", "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda", bf16=True) == torch.bfloat16
    assert resolve_dtype("auto", "cuda", bf16=False) == torch.float32  # T4, V100: no bf16 arithmetic


def test_shipped_configs_are_package_data_and_paths_pass_through(tmp_path):
    assert shipped_config_path(model_cfg()) is None
    shipped = shipped_config_path(model_cfg(config_file="qwen3_30b.json"))
    assert shipped == HF_CONFIGS_DIR / "qwen3_30b.json" and shipped.is_file()
    assert REPO / "outlier_lab" / "data" / "hf_configs" == HF_CONFIGS_DIR
    own = tmp_path / "my_config.json"
    own.write_text("{}")
    assert shipped_config_path(model_cfg(config_file=str(own))) == own
