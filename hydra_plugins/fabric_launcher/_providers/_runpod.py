"""RunPod through its documented REST API v2 (https://docs.runpod.io/api-reference-v2/overview).

The `runpod` SDK is not used: it speaks GraphQL with the API key in the URL's query string, which would put the key
in proxy and debug logs; REST v2 takes it as a bearer header and has the GPU catalog with a manufacturer field."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ._base import TAG_PREFIX, Instance, NoBalance, Offer, OfferQuery, Provider, Refused
from ._http import ApiError

CLOUDS = ("SECURE", "COMMUNITY")


def _instance(pod: Dict[str, Any]) -> Instance:
    """A Pod object (schema `Pod`, https://docs.runpod.io/api-reference-v2/pods/get-a-pod) as an Instance."""
    # ssh.direct is null until the pod runs and 22/tcp has a public port (schema `PodSsh`); the proxy carries no
    # SFTP, so only direct is usable.
    direct = (pod.get("ssh") or {}).get("direct") or {}
    return Instance(
        provider="runpod",
        id=str(pod["id"]),
        name=str(pod.get("name") or ""),
        status=str(pod.get("status") or "").lower(),
        address=direct.get("host"),
        port=int(direct["port"]) if direct.get("port") else None,
        user=str(direct.get("username") or "root"),
        usd_per_hour=pod.get("cost"),
    )


class RunPod(Provider):
    name = "runpod"
    default_image = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"  # the create-a-pod example's
    default_url = "https://api.runpod.io"

    def offers(self, query: OfferQuery) -> List[Offer]:
        """GET /v2/catalog/gpus per cloud and GPU count (https://docs.runpod.io/api-reference-v2/catalog/list-gpu-types).

        maxCount is a ceiling, not stock: availability is asked with count=N for each N, and with minCudaVersion
        so that a type whose hosts cannot run the image's CUDA reads NONE. `price` is per GPU. RunPod reports no
        host RAM per type (it is probed after create) and sizes the disk at create."""
        offers = []
        for cloud in CLOUDS:
            key = cloud.lower()
            for count in query.gpu_counts:
                params = {"include": "AVAILABILITY", "product": "POD", "cloud": cloud, "count": count}
                if query.min_cuda:
                    params["minCudaVersion"] = query.min_cuda
                body = self.api.request("GET", "/v2/catalog/gpus", params=params)
                for gpu in body.get("gpus", []):
                    if (
                        not gpu.get(key)
                        or gpu.get("availability") in (None, "NONE")
                        or count > int((gpu.get("maxCount") or {}).get(key) or 0)
                    ):
                        continue
                    regions = [dc["id"] for dc in gpu.get("dataCenters") or [] if dc.get("availability") != "NONE"]
                    offers.append(
                        Offer(
                            provider=self.name,
                            offer_id=f"{gpu['id']}/{cloud}/{count}",
                            gpu_name=str(gpu["name"]),
                            manufacturer=str(gpu.get("manufacturer") or "unknown").lower(),
                            gpu_count=count,
                            vram_gib=float(gpu["memory"]),
                            ram_gib=None,
                            disk_gib=None,
                            usd_per_hour=float(gpu["price"][key]) * count,
                            region=",".join(regions[:3]) or None,
                            create_args={"gpu_type_id": gpu["id"], "cloud": cloud, "min_cuda": query.min_cuda},
                        )
                    )
        return offers

    def create(self, offer: Offer, name: str, public_key: str, disk_gib: int, image: str) -> Instance:
        """POST /v2/pods (https://docs.runpod.io/api-reference-v2/pods/create-a-pod): PUBLIC_KEY is the SSH
        convention of RunPod images, 22/tcp makes `ssh.direct` appear, gpu.minCudaVersion keeps the pod off hosts
        whose driver cannot run the image. As its table says: 402 (no balance) stops, 403 (no access to that pool)
        and 400 (no capacity) move on to the next offer."""
        gpu = {"id": offer.create_args["gpu_type_id"], "count": offer.gpu_count}
        if offer.create_args.get("min_cuda"):
            gpu["minCudaVersion"] = offer.create_args["min_cuda"]
        body = {
            "name": name,
            "image": image,
            "cloud": offer.create_args["cloud"],
            "gpu": gpu,
            "disk": int(disk_gib),
            "ports": ["22/tcp"],
            "env": {"PUBLIC_KEY": public_key},
            "startSsh": True,
        }
        try:
            return _instance(self.api.request("POST", "/v2/pods", json=body, idempotent=False))
        except ApiError as err:
            if err.status == 402:
                raise NoBalance(
                    "runpod refused the create for lack of balance (HTTP 402): add funds at "
                    "https://console.runpod.io/user/billing; nothing was rented"
                ) from err
            if err.status == 403:
                raise Refused(f"runpod: this account cannot rent {offer.offer_id} (HTTP 403)") from err
            raise

    def get(self, instance_id: str) -> Optional[Instance]:
        pod = self.api.request("GET", f"/v2/pods/{instance_id}", missing_ok=True)
        return None if pod is None else _instance(pod)

    def destroy(self, instance_id: str) -> None:
        """DELETE /v2/pods/{id} (https://docs.runpod.io/api-reference-v2/pods/terminate-a-pod): 204, or 404 when
        it is already gone."""
        self.api.request("DELETE", f"/v2/pods/{instance_id}", missing_ok=True)

    def list_ours(self, prefix: str = TAG_PREFIX) -> List[Instance]:
        """GET /v2/pods (https://docs.runpod.io/api-reference-v2/pods/list-pods), filtered by name here."""
        pods = (self.api.request("GET", "/v2/pods") or {}).get("pods", [])
        return [
            _instance(p)
            for p in pods
            if str(p.get("name") or "").startswith(prefix) and p.get("status") != "TERMINATED"
        ]

    def console_command(self, instance_id: str) -> str:
        return (
            f'curl -X DELETE -H "Authorization: Bearer $RUNPOD_API_KEY" '
            f"https://api.runpod.io/v2/pods/{instance_id}   (or the console: https://console.runpod.io/pods)"
        )
