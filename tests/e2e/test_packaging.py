"""A plain (non-editable) install carries its data files and never reaches back into the checkout."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.support.cli import REPO


@pytest.mark.slow
def test_a_built_wheel_plans_offline_from_outside_the_checkout(tmp_path):
    # A copy without earlier build output, which would otherwise hand the wheel files the package data lacks.
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", "multirun_outputs", "__pycache__", ".pytest_cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("outlier_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "outlier_lab/data/gpus.yaml" in names and "outlier_lab/data/hf_configs/qwen3_30b.json" in names
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import outlier_lab, pathlib; from omegaconf import OmegaConf\n"
        "from outlier_lab.planning.catalog import load_catalog\n"
        "from outlier_lab.loading.models import load_hf_config\n"
        "assert pathlib.Path(outlier_lab.__file__).is_relative_to(pathlib.Path.cwd()), outlier_lab.__file__\n"
        "catalog = load_catalog()\n"
        "model = OmegaConf.create(dict(name='q', source='hub', path='nonexistent-org/nonexistent-model',\n"
        "                              revision='main', trust_remote_code=False, config_file='qwen3_30b.json'))\n"
        "print(len(catalog), load_hf_config(model).num_experts)\n"
    )
    env = {"PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    count, experts = out.stdout.split()
    assert int(count) >= 10 and int(experts) == 128
    # The console commands: declared in the wheel, installed as executables that run from any directory.
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "outlier-estimate = outlier_lab.commands.estimate:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    helped = subprocess.run(
        [str(tmp_path / "site" / "bin" / "outlier-compare"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert helped.returncode == 0 and helped.stdout.startswith("usage: outlier-compare "), helped.stderr[-2000:]
