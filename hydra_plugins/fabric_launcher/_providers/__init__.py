"""GPU cloud providers behind one interface: live offers, create with an SSH key, wait for SSH, destroy, list ours."""

import os
import threading
from typing import Any, Dict

from ._base import (
    DEAD_STATUSES,
    TAG_PREFIX,
    Instance,
    NoBalance,
    Offer,
    OfferQuery,
    Provider,
    ProviderError,
    Refused,
    interruptible_refusal,
    ssh_banner,
)
from ._http import ApiClient
from ._runpod import RunPod
from ._vast import Vast

__all__ = [
    "DEAD_STATUSES",
    "TAG_PREFIX",
    "Instance",
    "NoBalance",
    "Offer",
    "OfferQuery",
    "Provider",
    "ProviderError",
    "Refused",
    "interruptible_refusal",
    "ssh_banner",
    "KEY_ENVS",
    "PROVIDERS",
    "key_env",
    "provider_key",
    "make_provider",
]

# hydra.launcher.provider values that rent from a GPU cloud, and where each one's API key is read from by default.
KEY_ENVS = {"runpod": "RUNPOD_API_KEY", "vast": "VAST_API_KEY"}
PROVIDERS = tuple(KEY_ENVS)


def key_env(params: Dict[str, Any]) -> str:
    """The environment variable holding the API key of hydra.launcher.provider."""
    return params.get("api_key_env") or KEY_ENVS[params["provider"]]


def provider_key(params: Dict[str, Any]) -> Dict[str, str]:
    """{variable: API key} of a renting provider, for masking wherever launcher text goes; {} otherwise."""
    if params.get("provider") not in PROVIDERS:
        return {}
    value = os.environ.get(key_env(params), "")
    return {key_env(params): value} if value else {}


def make_provider(name: str, params: Dict[str, Any], cancel: threading.Event) -> Provider:
    """The provider named by hydra.launcher.provider, with its API key read from the environment (never config)."""
    cls = {"runpod": RunPod, "vast": Vast}[name]
    env = key_env({**params, "provider": name})
    key = os.environ.get(env, "")
    if not key:
        raise ProviderError(
            f"hydra.launcher.provider={name} needs an API key in ${env} (export {env}=...; it is "
            "sent only in request headers)",
            None,
        )
    api = ApiClient(
        params.get("api_url") or cls.default_url,
        key,
        timeout_s=float(params["api_timeout_s"]),
        retries=int(params["retries"]),
        backoff_s=float(params["backoff_s"]),
        backoff_max_s=float(params["backoff_max_s"]),
        cancel=cancel,
        what=name,
        spacing_s=cls.rate_limits_s,
    )
    return cls(api)
