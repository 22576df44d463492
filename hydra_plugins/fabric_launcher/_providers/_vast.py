"""Vast.ai through its documented REST API (https://docs.vast.ai/api-reference/overview-and-quickstart).

The `vastai` SDK is not used: it wraps the CLI (printing, its own retry loop, a key file under ~/.config), while the
launcher needs its own bounded retries, lost-answer handling and header-only auth."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from ._base import TAG_PREFIX, Instance, Offer, Provider, ProviderError, Refused

MAX_PAGES = 40  # instance listing is paged by 25 (show_instances); a bound on the loop


def _ssh_address(inst: Dict[str, Any]):
    """ssh_direct: the public IP and the host port mapped to 22/tcp; else Vast's SSH proxy host and port."""
    mapped = ((inst.get("ports") or {}).get("22/tcp") or [{}])[0].get("HostPort")
    if mapped and inst.get("public_ipaddr"):
        return str(inst["public_ipaddr"]).strip(), int(mapped)
    if inst.get("ssh_host") and inst.get("ssh_port"):
        return str(inst["ssh_host"]), int(inst["ssh_port"])
    return None, None


def _instance(inst: Dict[str, Any]) -> Instance:
    """An instance object (show instance, https://docs.vast.ai/api-reference/instances/show-instance)."""
    address, port = _ssh_address(inst)
    status = str(inst.get("actual_status") or inst.get("cur_state") or "loading").lower()
    return Instance(provider="vast", id=str(inst["id"]), name=str(inst.get("label") or ""), status=status,
                    address=address, port=port, user="root", usd_per_hour=inst.get("dph_total"))


class Vast(Provider):
    name = "vast"
    default_image = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"  # Vast's ssh runtype adds sshd
    default_url = "https://console.vast.ai"

    def offers(self) -> List[Offer]:
        """POST /api/v0/bundles/ (search offers, https://docs.vast.ai/api-reference/search/search-offers).

        Units as documented: gpu_ram and cpu_ram in MB, disk_space in GB, dph_total in $/h for the whole offer,
        inet_down in Mb/s; gpu_arch is the manufacturer field."""
        query = {"verified": {"eq": True}, "rentable": {"eq": True}, "rented": {"eq": False},
                 "type": "ondemand", "limit": 500}
        body = self.api.request("POST", "/api/v0/bundles/", json=query)
        offers = []
        for raw in (body or {}).get("offers", []):
            offers.append(Offer(
                provider=self.name, offer_id=str(raw["id"]), gpu_name=str(raw.get("gpu_name") or "?"),
                manufacturer=str(raw.get("gpu_arch") or "unknown").lower(), gpu_count=int(raw.get("num_gpus") or 0),
                vram_gib=float(raw.get("gpu_ram") or 0) / 1024, ram_gib=float(raw.get("cpu_ram") or 0) / 1024,
                disk_gib=float(raw.get("disk_space") or 0), usd_per_hour=float(raw["dph_total"]),
                download_mbps=raw.get("inet_down"), region=raw.get("geolocation")))
        return offers

    def create(self, offer: Offer, name: str, public_key: str, disk_gib: int, image: str) -> Instance:
        """PUT /api/v0/asks/{id}/ (create instance), then POST /api/v0/instances/{id}/ssh/ (attach ssh-key)."""
        body = {"image": image, "label": name, "disk": int(disk_gib), "runtype": "ssh_direct",
                "target_state": "running", "cancel_unavail": True}
        answer = self.api.request("PUT", f"/api/v0/asks/{offer.offer_id}/", json=body, idempotent=False) or {}
        if not answer.get("success") or not answer.get("new_contract"):
            raise Refused(f"vast create from offer {offer.offer_id} refused: {answer.get('msg') or answer}")
        instance_id = str(answer["new_contract"])
        try:
            self.api.request("POST", f"/api/v0/instances/{instance_id}/ssh/", json={"ssh_key": public_key})
        except ProviderError as err:
            raise ProviderError(f"vast instance {instance_id} created but its SSH key was not attached: {err}",
                                instance_id) from err
        return Instance(provider=self.name, id=instance_id, name=name, status="loading",
                        usd_per_hour=offer.usd_per_hour)

    def get(self, instance_id: str) -> Optional[Instance]:
        """GET /api/v0/instances/{id}/: the object sits under `instances` (a single object, not a list)."""
        body = self.api.request("GET", f"/api/v0/instances/{instance_id}/", missing_ok=True)
        inst = (body or {}).get("instances")
        return _instance(inst) if inst else None

    def destroy(self, instance_id: str) -> None:
        """DELETE /api/v0/instances/{id}/ (destroy instance): {"success": true}, or 404 when already gone."""
        answer = self.api.request("DELETE", f"/api/v0/instances/{instance_id}/", missing_ok=True)
        if answer is not None and answer.get("success") is False:
            raise ProviderError(f"vast destroy of {instance_id} refused: {answer.get('msg') or answer}",
                                instance_id)

    def list_ours(self, prefix: str = TAG_PREFIX) -> List[Instance]:
        """GET /api/v1/instances/ (show instances, keyset-paged by next_token), filtered by label prefix here."""
        found, token = [], None
        for _ in range(MAX_PAGES):
            params = {"limit": 25, "select_cols": json.dumps(["*"])}
            if token:
                params["after_token"] = token
            body = self.api.request("GET", "/api/v1/instances/", params=params) or {}
            found += [_instance(i) for i in body.get("instances", [])
                      if str(i.get("label") or "").startswith(prefix)]
            token = body.get("next_token")
            if not token:
                break
        return found

    def console_command(self, instance_id: str) -> str:
        return f"vastai destroy instance {instance_id}   (or the console: https://cloud.vast.ai/instances/)"
