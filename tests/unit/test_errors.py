"""The failure policy (outlier_lab/errors.py): user-facing errors are one line and exit code 2, bugs propagate."""

import pytest

from outlier_lab.errors import EXIT_CODE, UserError, did_you_mean, exit_on_user_error, is_user_facing, one_line


class MarkedError(RuntimeError):
    user_facing = True  # as the launcher plug-ins mark their own errors


def test_user_facing_errors_print_their_first_line_and_exit_2(capsys):
    for error in (UserError("\n  bad value x=3  \nsecond line"), MarkedError("no host fits job 0\nhost a: no GPU")):
        with pytest.raises(SystemExit) as exited, exit_on_user_error("job #0: "):
            raise error
        assert exited.value.code == EXIT_CODE == 2
        assert capsys.readouterr().err == f"error: job #0: {one_line(error)}\n"
    assert one_line(UserError("\n  bad value x=3  \nsecond line")) == "bad value x=3"


def test_a_bug_is_not_caught():
    assert not is_user_facing(ValueError("x")) and not is_user_facing(KeyboardInterrupt())
    with pytest.raises(ZeroDivisionError), exit_on_user_error():
        1 // 0


def test_the_launchers_environment_errors_are_marked_user_facing():
    from hydra_plugins.fabric_launcher._errors import LaunchError
    from hydra_plugins.fabric_launcher._providers import ProviderError
    from hydra_plugins.slurm_launcher.slurm_launcher import SlurmJobFailed

    for error in (LaunchError("no host fits job 0"), ProviderError("401 from the API"), SlurmJobFailed("job #0 ended")):
        assert is_user_facing(error), type(error).__name__


@pytest.mark.parametrize(
    "word,options,expected",
    [
        ("qwen3-30b", ["qwen3", "qwen3_30b", "qwen3_14b"], "qwen3_30b"),  # `-` for `_`
        ("H100", ["a100_80", "h100", "h200"], "h100"),  # case
        ("stream", ["auto", "resident", "streamed"], "streamed"),  # a close spelling
        ("alpah", ["alpha", "alpha_mode", "layers"], "alpha"),
        ("gpu", ["auto", "resident", "streamed"], None),  # nothing close: no guess
    ],
)
def test_did_you_mean_names_the_closest_option(word, options, expected):
    assert did_you_mean(word, options) == expected
