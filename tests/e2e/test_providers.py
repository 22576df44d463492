"""RunPod / Vast.ai adapters against the fake provider API: offers, fit and rank, retries, lost answers, destroy."""

from __future__ import annotations

import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from hydra_plugins.fabric_launcher._providers import Offer, OfferQuery, ProviderError, make_provider
from hydra_plugins.fabric_launcher._providers._choice import budget_refusal, rank, table
from hydra_plugins.fabric_launcher._providers._http import AnswerLost, ApiError
from outlier_lab.planning.estimate import Estimate
from tests.support.cli import REPO, command
from tests.support.provider_api import fake_cloud, runpod_gpu, vast_offer  # noqa: F401 - fixture used by name
from tests.support.ssh_server import ssh_server  # noqa: F401 - fixture used by name

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test@outlier-lab"


def provider(name, cloud, monkeypatch, **changes):
    env = {"runpod": "RUNPOD_API_KEY", "vast": "VAST_API_KEY"}[name]
    monkeypatch.setenv(env, cloud.api_key)
    params = {
        "api_url": cloud.url(),
        "api_key_env": None,
        "api_timeout_s": 2.0,
        "retries": 4,
        "backoff_s": 0.05,
        "backoff_max_s": 0.2,
        **changes,
    }
    return make_provider(name, params, threading.Event())


def needs(weights_gib=10.0, ram_floor=64.0, disk=20.0):
    """A job that needs (10 + 1 + 1) x 1.3 = 15.6 GiB on one GPU, RAM >= ram_floor, disk >= disk."""
    est = Estimate(
        weights_gib=weights_gib,
        activations_gib=1.0,
        overhead_gib=1.0,
        total_gib=weights_gib + 2,
        required_gib=(weights_gib + 2) * 1.3,
        ram_floor_gib=ram_floor,
        disk_gib=disk,
        params_total=1,
        params_active=1,
        quantization="none",
        block_weights_gib=1.0,
        safety_factor=1.3,
    )
    return SimpleNamespace(
        plan=est.to_dict(), gpu_count=1, vram_gib_each=est.required_gib, ram_gib=ram_floor, disk_gib=disk
    )


def test_runpod_offers_carry_the_manufacturer_field_and_one_offer_per_gpu_count(fake_cloud, monkeypatch):
    fake_cloud.runpod_gpus = [
        runpod_gpu("NVIDIA GeForce RTX 4090", "RTX 4090", "NVIDIA", 24, 0.44, max_count=2),
        runpod_gpu("AMD Instinct MI300X OAM", "MI300X", "AMD", 192, 0.10, max_count=1),
    ]
    offers = provider("runpod", fake_cloud, monkeypatch).offers(OfferQuery())
    by_id = {o.offer_id: o for o in offers}
    assert sorted(by_id) == [
        "AMD Instinct MI300X OAM/SECURE/1",
        "NVIDIA GeForce RTX 4090/SECURE/1",
        "NVIDIA GeForce RTX 4090/SECURE/2",
    ]
    two = by_id["NVIDIA GeForce RTX 4090/SECURE/2"]
    assert (two.manufacturer, two.gpu_count, two.vram_gib, two.usd_per_hour) == ("nvidia", 2, 24.0, 0.88)
    assert by_id["AMD Instinct MI300X OAM/SECURE/1"].manufacturer == "amd"
    assert fake_cloud.unauthorized == 0 and fake_cloud.key_in_url == 0


def test_rank_picks_the_cheapest_fitting_nvidia_offer_and_says_why_others_were_refused(fake_cloud, monkeypatch):
    fake_cloud.vast_offers = [
        vast_offer(1, "MI300X", "amd", 1, 192 * 1024, 256 * 1024, 500, 0.05),  # cheapest, but AMD
        vast_offer(2, "RTX 3060", "nvidia", 1, 12 * 1024, 128 * 1024, 500, 0.08),  # too little VRAM
        vast_offer(3, "RTX 4090", "nvidia", 1, 24 * 1024, 32 * 1024, 500, 0.20),  # fails the RAM floor
        vast_offer(4, "RTX 4090", "nvidia", 1, 24 * 1024, 128 * 1024, 10, 0.25),  # too little disk
        vast_offer(5, "RTX A5000", "nvidia", 1, 24 * 1024, 96 * 1024, 500, 0.30),  # the one
        vast_offer(6, "H100 SXM", "nvidia", 1, 80 * 1024, 512 * 1024, 900, 2.10),
    ]
    fitting, refused = rank(provider("vast", fake_cloud, monkeypatch).offers(OfferQuery()), needs(), ["nvidia"])
    assert [c.offer.offer_id for c in fitting] == ["5", "6"]
    reasons = {c.offer.offer_id: c.refusal for c in refused}
    assert "manufacturer amd" in reasons["1"] and "needed per GPU" in reasons["2"]
    assert "host RAM 32 GiB < floor 64" in reasons["3"] and "disk 10 GB < 20" in reasons["4"]
    shown = table(fitting, refused, fitting[0])
    assert shown.splitlines()[1].startswith("*") and "vast 5" in shown.splitlines()[1]


def test_rank_keeps_the_fewest_gpus_that_fit_a_type_rented_by_count():
    def offer(count):
        return Offer(
            "runpod",
            f"L4/SECURE/{count}",
            "L4",
            "nvidia",
            count,
            22.0,
            None,
            None,
            0.4 * count,
            create_args={"gpu_type_id": "NVIDIA L4", "cloud": "SECURE"},
        )

    fitting, refused = rank([offer(c) for c in (1, 2, 3, 4)], needs(weights_gib=30.0), ["nvidia"])
    # 30 GiB of weights: one or two L4s are too small, three hold it (10 + 1 + 1 + 1 slack) x 1.3 = 16.9 GiB each.
    assert [c.offer.gpu_count for c in fitting] == [3]
    assert sorted(c.offer.gpu_count for c in refused) == [1, 2]


def test_429_and_5xx_are_retried_with_backoff(fake_cloud, monkeypatch):
    fake_cloud.runpod_gpus = [runpod_gpu("NVIDIA L4", "L4", "NVIDIA", 24, 0.4, max_count=1)]
    fake_cloud.inject("offers", "429", "500")
    rp = provider("runpod", fake_cloud, monkeypatch)
    assert len(rp.offers(OfferQuery())) == 1
    assert rp.api.retried == 2
    # 429, 500, then one call per cloud and GPU count (1, 2, 4, 8)
    assert fake_cloud.calls.count("GET /v2/catalog/gpus") == 2 + 2 * 4


def test_a_lost_create_answer_is_not_retried_and_the_instance_is_found_by_its_name(fake_cloud, monkeypatch):
    fake_cloud.runpod_gpus = [runpod_gpu("NVIDIA L4", "L4", "NVIDIA", 24, 0.4, max_count=1)]
    rp = provider("runpod", fake_cloud, monkeypatch)
    offer = rp.offers(OfferQuery())[0]
    fake_cloud.inject("create", "lost")
    with pytest.raises(AnswerLost):
        rp.create(offer, "outlier-lab-test-0", PUBLIC_KEY, 40, "runpod/pytorch")
    assert fake_cloud.calls.count("POST /v2/pods") == 1
    found = rp.find_by_name("outlier-lab-test-0", attempts=2, delay_s=0.05)
    assert found is not None and found.id in fake_cloud.instances
    rp.destroy(found.id)
    rp.destroy(found.id)  # already gone: not an error
    assert fake_cloud.destroyed[found.id] == 1 and rp.list_ours() == []


def test_a_create_that_times_out_is_an_answer_lost(fake_cloud, monkeypatch):
    fake_cloud.vast_offers = [vast_offer(7, "L4", "nvidia", 1, 24 * 1024, 64 * 1024, 100, 0.3)]
    fake_cloud.hang_s = 1.5
    vast = provider("vast", fake_cloud, monkeypatch, api_timeout_s=0.5)
    fake_cloud.inject("create", "hang")
    with pytest.raises(AnswerLost):
        vast.create(vast.offers(OfferQuery())[0], "outlier-lab-hang-0", PUBLIC_KEY, 40, "pytorch/pytorch")
    assert [i.name for i in vast.list_ours()] == ["outlier-lab-hang-0"]


def test_vast_create_attaches_the_public_key_and_waits_until_ssh_answers(fake_cloud, ssh_server, monkeypatch):
    fake_cloud.vast_offers = [vast_offer(7, "L4", "nvidia", 1, 24 * 1024, 64 * 1024, 100, 0.3)]
    fake_cloud.start_polls = 2
    vast = provider("vast", fake_cloud, monkeypatch)
    inst = vast.create(vast.offers(OfferQuery())[0], "outlier-lab-v-0", PUBLIC_KEY, 40, "pytorch/pytorch")
    assert fake_cloud.instances[inst.id]["public_key"] == PUBLIC_KEY
    ready = vast.wait_ready(inst, timeout_s=20, poll_s=0.05, cancel=threading.Event())
    assert (ready.status, ready.address, ready.port) == ("running", ssh_server.host, ssh_server.port)
    assert [i.id for i in vast.list_ours("outlier-lab-")] == [inst.id]
    vast.destroy(inst.id)
    assert vast.list_ours() == [] and fake_cloud.destroyed[inst.id] == 1


@pytest.mark.timeout(120)  # a wait that ignored timeout_s would hang here; no wall-clock assert on a shared box
def test_ssh_that_never_comes_up_ends_the_wait_in_bounded_time(fake_cloud, monkeypatch):
    fake_cloud.runpod_gpus = [runpod_gpu("NVIDIA L4", "L4", "NVIDIA", 24, 0.4, max_count=1)]
    fake_cloud.ssh_never_up = True
    rp = provider("runpod", fake_cloud, monkeypatch)
    inst = rp.create(rp.offers(OfferQuery())[0], "outlier-lab-dead-0", PUBLIC_KEY, 40, "runpod/pytorch")
    with pytest.raises(ProviderError) as err:
        rp.wait_ready(inst, timeout_s=1.0, poll_s=0.1, cancel=threading.Event())
    assert err.value.instance_id == inst.id and "SSH did not answer within 1s" in str(err.value)


def test_a_wrong_key_is_refused_and_the_key_never_shows_in_errors(fake_cloud, monkeypatch):
    rp = provider("runpod", fake_cloud, monkeypatch)
    rp.api.session.headers["Authorization"] = "Bearer wrong-key-123456"
    with pytest.raises(ApiError) as err:
        rp.list_ours()
    assert err.value.status == 401 and "wrong-key-123456" not in str(err.value)


def test_a_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    with pytest.raises(ProviderError, match=r"needs an API key in \$VAST_API_KEY"):
        make_provider("vast", {"api_timeout_s": 1, "retries": 1, "backoff_s": 0, "backoff_max_s": 0}, threading.Event())


def test_budget_guard_refuses_by_hour_and_by_job():
    fitting, _ = rank([Offer("vast", "9", "H100", "nvidia", 1, 80.0, 256.0, 500.0, 2.5)], needs(), ["nvidia"])
    cheapest = fitting[0]
    assert "max_usd_per_hour=2" in budget_refusal(cheapest, {"max_usd_per_hour": 2.0})
    assert budget_refusal(cheapest, {"max_usd_per_hour": 3.0}) is None
    assert "set hydra.launcher.timeout_s" in budget_refusal(cheapest, {"max_usd_per_job": 1.0})
    assert "$5.00 (2.00 h by hydra.launcher.timeout_s" in budget_refusal(
        cheapest, {"max_usd_per_job": 1.0, "timeout_s": 7200}
    )
    assert budget_refusal(cheapest, {"max_usd_per_job": 6.0, "timeout_s": 7200}) is None


@pytest.mark.slow
def test_offers_script_ranks_fitting_offers_and_cleanup_destroys_leftovers_after_confirmation(
    fake_cloud, tiny_checkpoint, text_file
):
    from tests.support.cli import cli_env, run_cli, tiny_job_overrides

    fake_cloud.vast_offers = [
        vast_offer(1, "MI300X", "amd", 1, 192 * 1024, 256 * 1024, 500, 0.05),
        vast_offer(2, "RTX 4090", "nvidia", 1, 24 * 1024, 8 * 1024, 500, 0.20),
        vast_offer(3, "RTX A5000", "nvidia", 1, 24 * 1024, 96 * 1024, 500, 0.30),
        vast_offer(4, "H100 SXM", "nvidia", 1, 80 * 1024, 512 * 1024, 900, 2.10),
    ]
    env = dict(cli_env(), VAST_API_KEY=fake_cloud.api_key)
    job = tiny_job_overrides(tiny_checkpoint("llama"), text_file)
    proc = run_cli(
        "provider=vast",
        *job,
        "hardware.ram_floor_gib=16",
        f"hydra.launcher.api_url={fake_cloud.url()}",
        script="outlier-offers",
        env=env,
        timeout=300,
    )
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("*", "   vast"))]
    assert [r.lstrip("* ").split()[:2] for r in rows] == [["vast", "3"], ["vast", "4"]] and rows[0].startswith("*")
    assert "manufacturer amd" in proc.stdout and "host RAM 8 GiB < floor 16" in proc.stdout
    assert "would rent: vast 3" in proc.stdout and fake_cloud.api_key not in proc.stdout + proc.stderr

    leftover = fake_cloud.add_instance("vast", "outlier-lab-20260101-000000-abcdef-0")
    fake_cloud.add_instance("vast", "someone-elses-box")
    cleanup = [*command("outlier-offers"), "provider=vast", "--cleanup", f"hydra.launcher.api_url={fake_cloud.url()}"]
    refused = subprocess.run(
        [sys.executable, *cleanup], input="n\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert refused.returncode == 1 and leftover in refused.stdout and "nothing destroyed" in refused.stdout
    assert not fake_cloud.destroyed
    done = subprocess.run(
        [sys.executable, *cleanup], input="y\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert dict(fake_cloud.destroyed) == {leftover: 1}


def test_hydra_plugin_scan_imports_the_providers_package():
    # Hydra's scan executes every public module under hydra_plugins/ before it is in sys.modules; a module it
    # cannot execute hides the Fabric launcher from every run. A fresh interpreter, so nothing is imported yet.
    probe = (
        "from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
        "print([p.__name__ for p in Plugins.instance().discover(Launcher)])"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "FabricLauncher" in proc.stdout, proc.stderr[-2000:]


def test_a_second_hydra_plugin_scan_keeps_the_provider_classes(monkeypatch):
    # Hydra re-executes every public module under hydra_plugins/ on each scan (its test suites reset the singleton):
    # classes defined there would be replaced under whoever imported them, and `except ProviderError` would miss.
    from hydra.core.plugins import Plugins

    import hydra_plugins

    Plugins._scan_all_plugins(modules=[hydra_plugins])
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    with pytest.raises(ProviderError):
        make_provider("vast", {"api_timeout_s": 1, "retries": 1, "backoff_s": 0, "backoff_max_s": 0}, threading.Event())


def test_the_fake_refuses_and_records_what_the_published_documents_do_not_allow(fake_cloud, monkeypatch):
    rp = provider("runpod", fake_cloud, monkeypatch)
    vast = provider("vast", fake_cloud, monkeypatch)
    bad = [
        (rp, "GET", "/v2/catalog/gpus", {"params": {"include": "AVAILABILITY", "region": "EU"}}),  # no `region`
        (rp, "POST", "/v2/pods", {"json": {"name": "x", "image": "i", "gpu": {"id": "L4", "count": 0}}}),  # count<1
        (rp, "POST", "/v2/pods", {"json": {"name": "x", "image": "i", "gpu": {"id": "L4"}, "spot": True}}),
        (rp, "PUT", "/v2/pods", {}),  # no such method
        (vast, "POST", "/api/v0/bundles/", {"json": {"type": "on-demand"}}),  # the example's misspelt enum
        (vast, "PUT", "/api/v0/asks/5/", {"json": {"label": "no image"}}),  # image is required
        (vast, "GET", "/api/v0/instances/5/", {"params": {"api_key": fake_cloud.api_key}}),  # key in the URL
        (vast, "GET", "/api/v0/nothing/", {}),
    ]
    for prov, method, path, kwargs in bad:
        with pytest.raises(ProviderError):
            prov.api.request(method, path, **kwargs)
    assert len(fake_cloud.violations) >= len(bad), fake_cloud.violations
    assert fake_cloud.key_in_url == 1
    fake_cloud.violations.clear()  # what this test provoked; the fixture fails any other


def test_vast_pages_are_spaced_by_the_documented_rate_limit(fake_cloud, monkeypatch):
    for n in range(30):
        fake_cloud.add_instance("vast", f"outlier-lab-page-{n}")
    vast = provider("vast", fake_cloud, monkeypatch)
    assert len(vast.list_ours()) == 30
    assert fake_cloud.calls.count("GET /api/v1/instances/") == 2 and fake_cloud.too_frequent == {}


def test_vast_show_instance_ports_as_a_list_or_as_bindings_and_provisioning_has_no_address(fake_cloud, monkeypatch):
    from hydra_plugins.fabric_launcher._providers._vast import _instance

    fake_cloud.vast_offers = [vast_offer(7, "L4", "nvidia", 1, 24 * 1024, 64 * 1024, 100, 0.3)]
    fake_cloud.start_polls = 1
    iid = fake_cloud.add_instance("vast", "outlier-lab-p-0", status="starting")
    provisioning = _instance(fake_cloud.vast_instance(fake_cloud.instances[iid], "list"))
    assert (provisioning.status, provisioning.address) == ("provisioning", None)
    fake_cloud.instances[iid]["status"] = "running"
    for form in ("list", "dict"):
        running = _instance(fake_cloud.vast_instance(fake_cloud.instances[iid], form))
        assert (running.status, running.address, running.port) == (
            "running",
            fake_cloud.ssh[0],
            fake_cloud.instances[iid]["port"],
        ), form


def test_vast_search_filters_and_prices_the_planned_disk_on_the_server(fake_cloud, monkeypatch):
    fake_cloud.vast_offers = [
        vast_offer(1, "RTX 3060", "nvidia", 1, 12 * 1024, 64 * 1024, 500, 0.08),
        vast_offer(2, "RTX 4090", "nvidia", 1, 24 * 1024, 64 * 1024, 500, 0.30, cuda_max_good=12.4),
        vast_offer(3, "RTX A5000", "nvidia", 1, 24 * 1024, 64 * 1024, 500, 0.25, reliability=0.80),
        vast_offer(4, "RTX A6000", "nvidia", 1, 48 * 1024, 64 * 1024, 500, 0.40),
        vast_offer(5, "RTX 4090", "nvidia", 1, 24 * 1024, 64 * 1024, 500, 0.35),
    ]
    query = OfferQuery(min_vram_gib_each=16, min_total_vram_gib=16, disk_gib=100, min_cuda="12.8")
    offers = provider("vast", fake_cloud, monkeypatch).offers(query)
    # 1: too little GPU RAM, 2: CUDA 12.4 < 12.8, 3: unreliable; the rest cheapest first, with 100 GB of storage
    # at $0.15/GB/month in the hourly price; the other price is the bid at min_bid.
    assert [o.offer_id for o in offers] == ["5", "4"]
    storage = 0.15 * 100 / (30 * 24)
    assert offers[0].usd_per_hour == pytest.approx(0.35 + storage, abs=1e-6)  # the fake rounds to 6 places
    assert offers[0].other_usd_per_hour == pytest.approx(0.35 * 0.4 + storage, abs=1e-6)
