"""The CUDA an image needs (table, override, tag) and the CUDA a driver runs (nvidia-smi banner, else NVIDIA's table)."""

import pytest

from hydra_plugins.fabric_launcher._images import driver_cuda, driver_refusal, min_cuda
from hydra_plugins.fabric_launcher._providers._runpod import RunPod
from hydra_plugins.fabric_launcher._providers._vast import Vast


def smi(driver: str, banner_cuda: str = "") -> str:
    """DRIVER_COMMAND's output on a host whose nvidia-smi reports `driver` (and `banner_cuda` in its banner)."""
    return f"driver:\n{driver}\n{driver}\nbanner:\n" + (f"CUDA Version: {banner_cuda}\n" if banner_cuda else "")


def test_the_default_images_need_cuda_12_8_and_an_override_or_the_tag_says_for_others():
    assert min_cuda(RunPod.default_image) == (12, 8) and min_cuda(Vast.default_image) == (12, 8)
    assert min_cuda(RunPod.default_image, "12.4") == (12, 4)
    assert min_cuda("pytorch/pytorch:2.5.1-cuda12.1-cudnn9-runtime") == (12, 1)
    assert min_cuda("runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04") == (12, 4)
    assert min_cuda("me/custom:latest") is None
    with pytest.raises(ValueError, match="min_cuda='twelve'"):
        min_cuda("me/custom:latest", "twelve")


def test_the_driver_banner_wins_and_without_it_nvidias_driver_table_decides():
    assert driver_cuda(smi("535.104.05", "12.2")) == ("535.104.05", (12, 2))
    # NVIDIA's table: CUDA 12.4 GA needs >= 550.54.14, 12.8 GA >= 570.26
    assert driver_cuda(smi("550.54.15")) == ("550.54.15", (12, 4))
    assert driver_cuda(smi("570.124.06")) == ("570.124.06", (12, 8))
    assert driver_cuda("NO_NVIDIA_SMI\n") == (None, None)


def test_an_old_driver_is_refused_naming_both_versions_and_a_new_enough_one_or_no_requirement_is_not():
    reason = driver_refusal(smi("535.104.05", "12.2"), (12, 8), "img:tag")
    assert "driver 535.104.05 runs CUDA 12.2" in reason and "img:tag needs CUDA >= 12.8" in reason
    assert driver_refusal(smi("570.124.06", "12.8"), (12, 8), "img:tag") is None
    assert driver_refusal(smi("535.104.05", "12.2"), None, "img:tag") is None
    assert driver_refusal("NO_NVIDIA_SMI\n", (12, 8), "img:tag") is None  # the GPU probe refuses such a host
