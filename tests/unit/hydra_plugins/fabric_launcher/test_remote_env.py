"""The remote environment a job gets: auto is a venv over a rented image's python (its torch pinned), else as asked."""

from pathlib import Path

import pytest

from hydra_plugins.fabric_launcher._bundle import CodeBundle
from hydra_plugins.fabric_launcher._remote_job import env_python, env_settings, env_setup_command
from outlier_lab.errors import UserError

BUNDLE = CodeBundle(Path("."), "code", None, False, b"", ["torch>=2.4", "hydra-core>=1.3.2,<1.4"], "deps1234")


def params(**changes):
    return {
        "env_mode": "auto",
        "provider": "runpod",
        "python": "python3",
        "venv_system_site_packages": False,
        "installer": "pip",
        **changes,
    }


@pytest.mark.parametrize("provider", ["runpod", "vast"])
def test_auto_on_a_rented_image_is_a_venv_over_its_python_with_its_torch_pinned(provider):
    p = params(provider=provider)
    assert env_settings(p) == ("venv", True)
    command = env_setup_command(p, "/r", BUNDLE)
    assert "python3 -m venv --system-site-packages" in command and "'hydra-core>=1.3.2,<1.4'" in command
    assert "torch==" in command and "-c /r/envs/" in command  # the image's torch is a constraint, never replaced
    assert env_python(p, "/r", BUNDLE).startswith("/r/envs/") and "flock" in command and ".ready" in command


@pytest.mark.parametrize("provider", ["inventory", "command"])
def test_auto_elsewhere_is_the_interpreter_as_given(provider):
    p = params(provider=provider, python="/opt/py/bin/python")
    assert env_settings(p) == ("interpreter", False)
    assert env_setup_command(p, "/r", BUNDLE) is None and env_python(p, "/r", BUNDLE) == "/opt/py/bin/python"


def test_an_env_is_keyed_by_whether_it_sees_site_packages_and_a_bad_mode_is_one_line():
    plain = env_python(params(env_mode="venv"), "/r", BUNDLE)
    over_site = env_python(params(env_mode="venv", venv_system_site_packages=True), "/r", BUNDLE)
    assert plain != over_site
    assert "torch==" not in env_setup_command(params(env_mode="venv"), "/r", BUNDLE)
    with pytest.raises(UserError, match="env_mode='conda'"):
        env_settings(params(env_mode="conda"))
