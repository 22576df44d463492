"""Compose a command's run config from conf/, checking each override first: a typo is one line naming the closest
option (`model=qwen3-30b` -> did you mean model=qwen3_30b?) instead of Hydra's option list or its hint to add `+`."""

from __future__ import annotations

from typing import Iterable, List, Optional

from omegaconf import DictConfig

from outlier_lab.analysis.detectors import settings_nodes
from outlier_lab.commands import CONF_DIR
from outlier_lab.config import register_configs, unknown_setting
from outlier_lab.errors import UserError, did_you_mean


def overrides_of(argv: Iterable[str]) -> List[str]:
    """The Hydra overrides among a command's arguments (`key=value`, `~key`), without its flags."""
    return [arg for arg in argv if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]


def check_overrides(overrides: Iterable[str]) -> None:
    """Raise a UserError for the first override that names an option or a setting that does not exist. What this
    cannot parse is left to Hydra, which reports it in its own words."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return
    register_configs(settings_nodes())
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        for override in parsed:
            problem = _problem(override, loader)
            if problem:
                raise UserError(problem)


def compose(overrides: List[str]) -> DictConfig:
    """The run config a command plans or inspects, composed as `outlier-run` would (no output folder, no job)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(str(err).splitlines()[0]) from None


def _problem(override, loader) -> Optional[str]:
    key = override.key_or_group
    if override.is_delete() or override.package is not None:
        return None
    if loader.repository.group_exists(key):
        options = loader.get_group_options(key)
        try:
            if override.is_sweep_override():
                values = list(override.sweep_string_iterator())
            elif isinstance(override.value(), list):  # detector=[llm_int8,massive]: several options of one group
                values = [str(v) for v in override.value()]
            else:
                values = [override.get_value_element_as_str()]
        except Exception:  # noqa: BLE001 - a range or glob sweep over a group: Hydra expands and checks it
            return None
        for value in values:
            if value not in options and value != "null":
                close = did_you_mean(value, options)
                sign = "++" if override.is_force_add() else "+" if override.is_add() else ""
                hint = f"did you mean {sign}{key}={close}?" if close else f"options: {', '.join(options)}"
                return f"{sign}{key}={value} is not an option of {key} ({hint})"
        return None
    if override.is_add() or override.is_force_add() or key == "hydra" or key.startswith("hydra."):
        return None  # a `+key` is checked against the schema once composed (config.check_schema)
    return unknown_setting(key)
