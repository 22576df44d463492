"""Vast.ai through its documented REST API (https://docs.vast.ai/api-reference/overview-and-quickstart).

The `vastai` SDK is not used: it wraps the CLI (printing, its own retry loop, a key file under ~/.config), while the
launcher needs its own bounded retries, lost-answer handling and header-only auth."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from ._base import TAG_PREFIX, Instance, Offer, OfferQuery, Provider, ProviderError, Refused
from ._http import RequestRefused

MAX_PAGES = 40  # instance listing is paged by 25 (show_instances); a bound on the loop
SEARCH_LIMIT = 500  # the most offers one search returns: the cheapest come first (order by dph_total)
# Vast's reliability score (0-1) of a machine: below this, an instance dropping mid-job is likely enough that the
# rerun costs more than the cheaper price saves.
MIN_RELIABILITY = 0.95
# Cheapest first. The document's schema asks for exactly two [field, direction] entries (minItems = maxItems = 2 on
# `order`), so the offer id breaks ties.
ORDER = [["dph_total", "asc"], ["id", "asc"]]


def _ssh_address(inst: Dict[str, Any]):
    """Where SSH answers. `ports` is documented two ways: a dict of Docker bindings (show instances v1), whose
    22/tcp HostPort on public_ipaddr is the direct address, or a list of exposed container ports (show instance),
    which maps nothing: then ssh_host:ssh_port, the address `vastai ssh-url` prints."""
    ports = inst.get("ports")
    bindings = ports.get("22/tcp") if isinstance(ports, dict) else None
    mapped = bindings[0].get("HostPort") if bindings else None
    if mapped and inst.get("public_ipaddr"):
        return str(inst["public_ipaddr"]).strip(), int(mapped)
    if inst.get("ssh_host") and inst.get("ssh_port"):
        return str(inst["ssh_host"]), int(inst["ssh_port"])
    return None, None


def _instance(inst: Dict[str, Any]) -> Instance:
    """An instance object (show instance, https://docs.vast.ai/api-reference/instances/show-instance).

    actual_status is the container's state and null while it is provisioning (the image still pulling); cur_state
    is the contract's and says running from the start, so it never stands in for actual_status. An address is set
    only once the container runs: the proxy's is published before that."""
    status = str(inst.get("actual_status") or "provisioning").lower()
    address, port = _ssh_address(inst) if status == "running" else (None, None)
    return Instance(
        provider="vast",
        id=str(inst["id"]),
        name=str(inst.get("label") or ""),
        status=status,
        address=address,
        port=port,
        user="root",
        usd_per_hour=inst.get("dph_total"),
    )


class Vast(Provider):
    name = "vast"
    default_image = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"  # Vast's ssh runtype adds sshd
    default_url = "https://console.vast.ai"
    # x-rate-limit of each endpoint's document (api-reference/openapi/yaml/*.yaml): seconds between two calls;
    # search offers allows 10 a minute.
    rate_limits_s = {"search": 6.0, "create": 4.5, "get": 2.0, "list": 1.0, "destroy": 3.0}

    def offers(self, query: OfferQuery) -> List[Offer]:
        """POST /api/v0/bundles/ (search offers, https://docs.vast.ai/api-reference/search/search-offers).

        The server filters (GPU RAM, count, CUDA, reliability) and orders by price, since it returns
        at most SEARCH_LIMIT offers; allocated_storage is the disk the create asks for, so dph_total includes its
        storage. type=bid prices each offer at its min_bid (interruptible). Units as documented: gpu_ram, cpu_ram
        in MB, disk_space in GB, dph_total in $/h for the whole offer, inet_down in Mb/s."""
        body: Dict[str, Any] = {
            "verified": {"eq": True},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "type": "bid" if query.interruptible else "ondemand",
            "limit": SEARCH_LIMIT,
            "allocated_storage": float(query.disk_gib),
            "order": ORDER,
            "num_gpus": {"gte": 1, "lte": max(query.gpu_counts)},
            "gpu_ram": {"gte": int(query.min_vram_gib_each * 1024)},
            "gpu_total_ram": {"gte": int(query.min_total_vram_gib * 1024)},
            "reliability": {"gte": MIN_RELIABILITY},
        }
        if query.min_cuda:
            body["cuda_max_good"] = {"gte": float(query.min_cuda)}
        answer = self.api.request("POST", "/api/v0/bundles/", json=body, endpoint="search")
        offers = []
        for raw in (answer or {}).get("offers", []):
            price = float(raw["dph_total"])
            storage = price - float(raw["min_bid"] if query.interruptible else raw["dph_base"])
            other = float(raw["dph_base"] if query.interruptible else raw["min_bid"]) + storage
            offers.append(
                Offer(
                    provider=self.name,
                    offer_id=str(raw["id"]),
                    gpu_name=str(raw.get("gpu_name") or "?"),
                    manufacturer=str(raw.get("gpu_arch") or "unknown").lower(),
                    gpu_count=int(raw.get("num_gpus") or 0),
                    vram_gib=float(raw.get("gpu_ram") or 0) / 1024,
                    ram_gib=float(raw.get("cpu_ram") or 0) / 1024,
                    disk_gib=float(raw.get("disk_space") or 0),
                    usd_per_hour=price,
                    other_usd_per_hour=other,
                    interruptible=query.interruptible,
                    download_mbps=raw.get("inet_down"),
                    region=raw.get("geolocation"),
                    create_args={"bid": float(raw["min_bid"])},
                )
            )
        return offers

    def create(self, offer: Offer, name: str, public_key: str, disk_gib: int, image: str) -> Instance:
        """PUT /api/v0/asks/{id}/ (create instance), then POST /api/v0/instances/{id}/ssh/ (attach ssh-key)."""
        body = {
            "image": image,
            "label": name,
            "disk": int(disk_gib),
            "runtype": "ssh_direct",
            "target_state": "running",
            "cancel_unavail": True,
        }
        if offer.interruptible:  # create instance: `price` is the bid, "only for interruptible instances"
            body["price"] = offer.create_args["bid"]
        answer = (
            self.api.request("PUT", f"/api/v0/asks/{offer.offer_id}/", json=body, idempotent=False, endpoint="create")
            or {}
        )
        if not answer.get("success") or not answer.get("new_contract"):
            raise Refused(f"vast create from offer {offer.offer_id} refused: {answer.get('msg') or answer}")
        instance_id = str(answer["new_contract"])
        try:
            self.api.request(
                "POST", f"/api/v0/instances/{instance_id}/ssh/", json={"ssh_key": public_key}, endpoint="attach"
            )
        except ProviderError as err:
            raise ProviderError(
                f"vast instance {instance_id} created but its SSH key was not attached: {err}", instance_id
            ) from err
        return Instance(
            provider=self.name, id=instance_id, name=name, status="loading", usd_per_hour=offer.usd_per_hour
        )

    def get(self, instance_id: str) -> Optional[Instance]:
        """GET /api/v0/instances/{id}/: the object sits under `instances` (a single object, not a list). The
        document's answer for an id the account no longer has is a 400 ("invalid instance ID"); a null object or a
        404 is read the same way."""
        try:
            body = self.api.request("GET", f"/api/v0/instances/{instance_id}/", missing_ok=True, endpoint="get")
        except RequestRefused as err:
            if err.status == 400:
                return None
            raise
        inst = (body or {}).get("instances")
        return _instance(inst) if inst else None

    def destroy(self, instance_id: str) -> None:
        """DELETE /api/v0/instances/{id}/ (destroy instance): {"success": true}, or 404 when already gone."""
        answer = self.api.request("DELETE", f"/api/v0/instances/{instance_id}/", missing_ok=True, endpoint="destroy")
        if answer is not None and answer.get("success") is False:
            raise ProviderError(f"vast destroy of {instance_id} refused: {answer.get('msg') or answer}", instance_id)

    def list_ours(self, prefix: str = TAG_PREFIX) -> List[Instance]:
        """GET /api/v1/instances/ (show instances, keyset-paged by next_token, pages spaced by its rate limit),
        filtered by label prefix here."""
        found, token = [], None
        for _ in range(MAX_PAGES):
            params = {"limit": 25, "select_cols": json.dumps(["*"])}
            if token:
                params["after_token"] = token
            body = self.api.request("GET", "/api/v1/instances/", params=params, endpoint="list") or {}
            found += [_instance(i) for i in body.get("instances", []) if str(i.get("label") or "").startswith(prefix)]
            token = body.get("next_token")
            if not token:
                break
        return found

    def console_command(self, instance_id: str) -> str:
        return f"vastai destroy instance {instance_id}   (or the console: https://cloud.vast.ai/instances/)"
