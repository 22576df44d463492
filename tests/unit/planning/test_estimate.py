"""Resource estimate and hardware selection: exact counts, scaling, MXFP4 choice, vendor filter, cheapest fit, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from outlier_lab import planning
from outlier_lab.errors import UserError
from outlier_lab.planning.catalog import load_catalog
from outlier_lab.planning.estimate import GIB, estimate
from tests.support.cli import REPO, run_cli

ARCHS = ("llama", "gpt2", "olmoe", "qwen3_moe", "glm4_moe", "gpt_oss", "qwen3_next", "deepseek_v3")


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from outlier_lab.analysis.detectors import settings_nodes
    from outlier_lab.config import register_configs

    register_configs(settings_nodes())
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


def local_model(checkpoint: Path, *overrides):
    return compose("model=local", f"model.path={checkpoint}", "device=cpu", *overrides)


def write_catalog(path: Path, classes: dict) -> Path:
    base = dict(vendor="nvidia", compute_capability="9.0", max_per_node=8, host_ram_gib_per_gpu=256)
    path.write_text(yaml.safe_dump({k: dict(base, name=k.upper(), **v) for k, v in classes.items()}))
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_param_counts_match_the_instantiated_model_exactly(tiny_checkpoint, arch):
    from transformers import AutoModel, AutoModelForCausalLM

    checkpoint = tiny_checkpoint(arch)
    est = estimate(local_model(checkpoint))
    # params_total is the whole checkpoint's model, LM head included, although the run skips the head.
    whole = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    assert est.params_total == sum(p.numel() for p in whole.parameters())
    model = AutoModel.from_pretrained(checkpoint, dtype=torch.float32)
    resident = sum(p.numel() * p.element_size() for p in model.parameters())
    resident += sum(b.numel() * b.element_size() for b in model.buffers())
    assert est.weights_gib * GIB == pytest.approx(resident, rel=1e-12)
    config = model.config
    experts = next(
        (
            getattr(config, k)
            for k in ("num_experts", "num_local_experts", "n_routed_experts")
            if getattr(config, k, None)
        ),
        None,
    )
    if experts is None:
        assert est.params_active == est.params_total
    else:
        routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in f".{n}" and "shared" not in n)
        assert est.params_active == est.params_total - routed + routed * config.num_experts_per_tok // experts


def test_dtype_is_honoured(tiny_checkpoint):
    checkpoint = tiny_checkpoint("llama")
    fp32 = estimate(local_model(checkpoint, "model.dtype=float32"))
    bf16 = estimate(local_model(checkpoint, "model.dtype=bfloat16"))
    assert bf16.weights_gib == pytest.approx(fp32.weights_gib / 2, rel=0.01)
    assert bf16.dtype == "bfloat16" and fp32.dtype == "float32"


@pytest.mark.parametrize("arch", ("llama", "qwen3_moe", "gpt_oss"))
def test_activations_grow_with_seq_len_and_batch(tiny_checkpoint, arch):
    checkpoint = tiny_checkpoint(arch)

    def activations(seq_len, batch):
        return estimate(
            local_model(
                checkpoint, f"dataset.seq_len={seq_len}", f"dataset.batch_size={batch}", "dataset.num_sequences=64"
            )
        ).activations_gib

    by_len = [activations(t, 2) for t in (64, 128, 256, 512)]
    by_batch = [activations(128, b) for b in (1, 2, 4, 8)]
    assert by_len == sorted(by_len) and len(set(by_len)) == 4
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 4
    weights = {estimate(local_model(checkpoint, f"dataset.seq_len={t}")).weights_gib for t in (64, 512)}
    assert len(weights) == 1  # the weights do not depend on the data shape


def test_histogram_resolution_is_counted_as_configured(tiny_checkpoint):
    # The reducer's histogram grows with detector.bins_per_octave; the estimate must grow by exactly its size.
    from outlier_lab.analysis.detectors._int8_reducer import Criteria, Int8Reducer

    checkpoint = tiny_checkpoint("llama")
    coarse = estimate(local_model(checkpoint, "detector.bins_per_octave=32"))
    fine = estimate(local_model(checkpoint, "detector.bins_per_octave=256"))
    from tests.support.checkpoints import HIDDEN as hidden  # the tiny llama's residual width, its only feature space

    def hist_bytes(bins):
        reducer = Int8Reducer(Criteria(bins_per_octave=bins), num_blocks=1, hidden=hidden)
        return reducer.hist.numel() * reducer.hist.element_size()

    grown = (fine.activations_gib - coarse.activations_gib) * GIB
    assert grown == pytest.approx(hist_bytes(256) - hist_bytes(32), rel=1e-9)


def test_every_expert_counts_not_only_the_active_ones(tiny_checkpoint):
    checkpoint = tiny_checkpoint("qwen3_moe")
    four = estimate(local_model(checkpoint))
    eight = estimate(local_model(checkpoint, "+model.config_overrides.num_experts=8"))
    # Doubling the experts (top-k unchanged) adds a full copy of the routed expert weights.
    routed_four = four.params_total - four.params_active  # = routed * (1 - k/E) with k=2, E=4 -> routed / 2
    router_growth = 4 * 64 * 8  # 4 more router rows of width 64 in each of the 8 blocks
    assert eight.params_total - four.params_total == 2 * routed_four + router_growth
    assert eight.params_active == four.params_active + router_growth  # the router is dense
    # Qwen3-30B-A3B from its shipped config: 30.5B parameters with its LM head (151,936 x 2048, untied), ~30.2B
    # resident in bf16 (the run skips the head), not the ~3.3B active ones.
    qwen = estimate(compose("model=qwen3_30b", "hardware=h100"), load_catalog()["h100"])
    head = 151_936 * 2048
    assert qwen.params_total == 30_220_957_696 + head
    assert 3.0e9 < qwen.params_active < 3.7e9
    assert qwen.weights_gib == pytest.approx((qwen.params_total - head) * 2 / GIB, rel=1e-3)


def test_mxfp4_kept_only_where_gpu_and_runtime_support_it():
    catalog = load_catalog()
    cfg = compose("model=gptoss", "hardware=h100")
    packed = estimate(cfg, catalog["h100"])
    volta = estimate(cfg, catalog["v100"])
    assert packed.quantization == "mxfp4"
    assert volta.quantization.startswith("mxfp4->float32")  # V100 has no bf16 arithmetic: float32
    assert any("dequantized" in n or "lacks MXFP4" in n for n in volta.notes)
    # MXFP4 experts are ~4.25 bits instead of 16: the dequantized model is well over three times larger.
    assert 55 < packed.weights_gib < 66
    assert volta.weights_gib > 3 * packed.weights_gib
    assert volta.params_total == packed.params_total
    no_kernels = estimate(compose("model=gptoss", "hardware=h100", "hardware.mxfp4_kernels=false"), catalog["h100"])
    assert no_kernels.weights_gib == pytest.approx(volta.weights_gib / 2)  # dequantized to bf16, V100's in float32
    cpu = estimate(compose("model=gptoss", "hardware=local", "device=cpu"))
    assert cpu.quantization.startswith("mxfp4->float32")


def test_auto_picks_the_cheapest_class_times_count(tmp_path):
    cfg = compose("model=olmoe", "hardware=auto")
    est = estimate(cfg, load_catalog()["h100"])
    need_one = planning.per_gpu_required(est, 1)
    classes = {  # small: needs several GPUs; mid: one fits; big: one fits but costs more
        "small": dict(vram_gib=need_one / 2.5, usd_per_hour=0.5),
        "mid": dict(vram_gib=need_one * 1.05, usd_per_hour=1.9),
        "big": dict(vram_gib=need_one * 3, usd_per_hour=2.5),
    }
    catalog_path = write_catalog(tmp_path / "gpus.yaml", classes)
    chosen = planning.plan(
        compose("model=olmoe", "hardware=auto", f"hardware.catalog={catalog_path}", "engine=resident")
    )
    # Brute force over every (class x count) with the documented per-GPU split; nodes have 1, 2, 4 or 8 GPUs, and
    # the classes share the default job-time figures, so the cheapest job is the cheapest hour.
    options = []
    for gpu in load_catalog(catalog_path).values():
        for count in (1, 2, 4, 8):
            if planning.per_gpu_required(est, count) <= gpu.vram_gib:
                options.append((gpu.usd_per_hour * count, count, gpu.key))
                break
    price, count, key = min(options)
    assert (chosen.gpu.key, chosen.count) == (key, count)
    assert chosen.usd_per_hour == pytest.approx(price)
    assert chosen.to_dict()["gpu"]["class"] == key.upper()
    assert chosen.per_gpu_required_gib <= chosen.gpu.vram_gib

    # Equal prices: the plan with fewer GPUs wins.
    tie = dict(
        classes,
        small=dict(vram_gib=need_one / 1.5, usd_per_hour=0.95),
        mid=dict(vram_gib=need_one * 1.05, usd_per_hour=1.9),
    )
    tie_path = write_catalog(tmp_path / "tie.yaml", tie)
    tied = planning.plan(compose("model=olmoe", "hardware=auto", f"hardware.catalog={tie_path}", "engine=resident"))
    assert (tied.gpu.key, tied.count) == ("mid", 1)

    # The RAM floor rules out nodes with too little host memory: 2 x small has 2 x 16 GiB < 64 GiB.
    low_ram = dict(classes, small=dict(classes["small"], host_ram_gib_per_gpu=16))
    ram_path = write_catalog(tmp_path / "ram.yaml", low_ram)
    floored = planning.plan(compose("model=olmoe", "hardware=auto", f"hardware.catalog={ram_path}", "engine=resident"))
    assert floored.gpu.key != "small" or floored.count * 16 >= 64


def test_vendor_filter_removes_other_manufacturers(tmp_path):
    classes = {
        "cheap_amd": dict(vendor="amd", compute_capability="gfx942", vram_gib=192, usd_per_hour=0.1),
        "nv": dict(vram_gib=80, usd_per_hour=5.0),
    }
    path = write_catalog(tmp_path / "gpus.yaml", classes)
    nvidia = planning.plan(compose("model=olmoe", "hardware=auto", f"hardware.catalog={path}"))
    assert nvidia.gpu.vendor == "nvidia" and nvidia.gpu.key == "nv"
    anyone = planning.plan(compose("model=olmoe", "hardware=auto", f"hardware.catalog={path}", "hardware.vendor=any"))
    assert anyone.gpu.key == "cheap_amd"
    shipped = planning.plan(compose("model=glm", "hardware=auto"))
    assert shipped.gpu.vendor == "nvidia"
    with pytest.raises(UserError, match="matches no GPU class"):
        planning.plan(compose("model=olmoe", "hardware=auto", "hardware.vendor=intel"))


def test_clear_errors_when_nothing_fits(tmp_path):
    path = write_catalog(tmp_path / "gpus.yaml", {"tiny": dict(vram_gib=1.0, usd_per_hour=0.1, max_per_node=2)})
    with pytest.raises(UserError, match=r"no nvidia GPU class .* fits this job.*estimate: weights"):
        planning.plan(compose("model=qwen3_30b", "hardware=auto", f"hardware.catalog={path}"))
    # A fixed class that is too small names the estimate and a class that would fit.
    with pytest.raises(UserError) as err:
        planning.plan(compose("model=glm", "hardware=t4", "engine=resident"))
    message = str(err.value)
    assert "does not fit" in message and "estimate: weights" in message and "would fit (hardware=" in message
    assert "\n" not in message
    # Streamed too: a GPU that cannot hold one block says how much that block needs.
    with pytest.raises(UserError, match=r"engine=streamed needs \d+\.\d GiB per GPU.*largest block \d+\.\d+ GiB"):
        planning.plan(
            compose(
                "model=glm", "hardware=auto", f"hardware.catalog={path}", "hardware.gpu_class=tiny", "engine=streamed"
            )
        )
    with pytest.raises(UserError, match="not a GPU class"):
        planning.plan(compose("model=olmoe", "hardware=auto", "hardware.gpu_class=nonesuch"))


def test_local_check_fails_clearly_when_the_job_cannot_fit_this_machine(tiny_checkpoint):
    checkpoint = tiny_checkpoint("llama")
    fits = planning.plan(local_model(checkpoint, "hardware=local"))
    assert fits.local and fits.gpu is None and fits.to_dict()["gpu"] is None
    huge = local_model(
        checkpoint,
        "hardware=local",
        "dataset.seq_len=512",
        "dataset.batch_size=100000000",
        "dataset.num_sequences=100000000",
    )
    with pytest.raises(UserError, match=r"hardware=local: this job needs .* GiB of RAM"):
        planning.plan(huge)


@pytest.mark.slow
def test_estimate_script_json_and_table():
    proc = run_cli("model=qwen3_30b", "format=json", script="outlier-estimate")
    data = json.loads(proc.stdout)
    for key in (
        "weights_gib",
        "activations_gib",
        "overhead_gib",
        "total_gib",
        "required_gib",
        "ram_floor_gib",
        "disk_gib",
        "params_total",
        "params_active",
        "quantization",
    ):
        assert key in data
    assert set(data["gpu"]) >= {"class", "vendor", "count", "vram_gib_each"}
    assert data["gpu"]["vendor"] == "nvidia"
    assert data["required_gib"] == pytest.approx(data["total_gib"] * 1.3)
    assert data["gpu"]["count"] * data["gpu"]["vram_gib_each"] >= data["weights_gib"]
    table = run_cli("model=olmoe", "dataset.seq_len=512", "hardware=h100", script="outlier-estimate").stdout
    assert "required (x1.3)" in table and "H100-80" in table
    bad = run_cli("model=olmoe", "format=xml", script="outlier-estimate", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: format='xml'")


def test_a_launched_job_runs_under_the_launchers_plan_and_checks_its_host(tiny_checkpoint, tmp_path):
    from outlier_lab.config import PLAN_FILE, planned_override
    from outlier_lab.pipeline import _plan_resources, ran_on

    checkpoint = tiny_checkpoint("llama")
    launcher = planning.plan(local_model(checkpoint, "hardware=t4"))  # what a launcher plans: 1 x T4
    path = tmp_path / PLAN_FILE
    planning.write_plan(path, launcher)
    override = planned_override(str(path))
    recorded, host = _plan_resources(local_model(checkpoint, "hardware=t4", override))
    assert recorded == json.loads(path.read_text()) and recorded["gpu"]["key"] == "t4"
    # This machine (no GPU) was checked as hardware=local checks it; nothing was planned against the catalog again.
    assert host.local and host.gpu is None and host.estimate.device == "cpu" and host.estimate.dtype == "float32"
    assert ran_on(host)["gpu_name"] is None and ran_on(host)["device"] == "cpu"
    huge = local_model(
        checkpoint,
        "hardware=t4",
        override,
        "dataset.seq_len=512",
        "dataset.batch_size=100000000",
        "dataset.num_sequences=100000000",
    )
    with pytest.raises(UserError, match=r"the launcher planned 1 x T4 for this job, but on the host it landed on this"):
        _plan_resources(huge)
    with pytest.raises(UserError, match="cannot read the launcher's plan"):
        _plan_resources(local_model(checkpoint, "hardware=t4", planned_override(str(tmp_path / "absent.json"))))


@pytest.mark.slow
def test_in_process_run_refuses_a_remote_plan(text_file):
    proc = run_cli("model=olmoe", "hardware=auto", "hydra/launcher=basic", "hydra.mode=RUN", check=False)
    assert proc.returncode == 2
    assert "hardware=auto plans a remote run" in proc.stderr and "fabric launcher" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_results_record_the_plan_and_the_measured_peak(tiny_checkpoint, text_file, tmp_path):
    from tests.support.cli import tiny_job_overrides

    run_dir = tmp_path / "run"
    run_cli(*tiny_job_overrides(tiny_checkpoint("olmoe"), text_file, run_dir), "device=cpu")
    results = json.loads((run_dir / "results.json").read_text())
    resources = results["resources"]
    assert resources["local"] is True and resources["gpu"] is None
    assert resources["params_total"] == results["model"]["params_total"]
    assert resources["params_active"] == results["model"]["params_active"]
    assert resources["total_gib"] == pytest.approx(
        resources["weights_gib"] + resources["activations_gib"] + resources["overhead_gib"]
    )
    assert results["peak_memory_kind"] == "cpu_peak_rss_growth" and results["peak_memory_gib"] > 0


SHIPPED_MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml") if p.stem != "local")


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_every_shipped_model_is_estimable_offline(name):
    planned = planning.plan(compose(f"model={name}", "hardware=auto"))
    est = planned.estimate
    assert est.params_total > 0 and 0 < est.params_active <= est.params_total
    assert est.weights_gib > 0 and est.activations_gib > 0 and est.disk_gib > est.weights_gib / 2
    assert planned.gpu.vendor == "nvidia" and planned.per_gpu_required_gib <= planned.gpu.vram_gib


def test_gpus_without_bf16_run_float32_with_the_memory_doubled():
    """A T4 (cc 7.5) has no bf16 arithmetic: model.dtype=auto plans float32 there, forced on CPU by naming the class."""
    from outlier_lab.loading.models import resolve_dtype
    from outlier_lab.planning.catalog import load_catalog

    catalog = load_catalog()
    t4, l4 = (estimate(compose("model=qwen3_8b", "hardware=auto"), catalog[k], "resident") for k in ("t4", "l4"))
    assert (t4.dtype, l4.dtype) == ("float32", "bfloat16")
    assert t4.weights_gib == pytest.approx(2 * l4.weights_gib, rel=1e-6)
    assert any("no bf16 arithmetic" in n and "fp16 overflows" in n for n in t4.notes)
    assert resolve_dtype("auto", "cuda", bf16=False) == torch.float32
    assert resolve_dtype("auto", "cuda", bf16=True) == torch.bfloat16


def test_fp8_checkpoint_is_counted_in_fp8_on_disk():
    """DeepSeek-V3 ships block-quantized FP8 (~640 GiB); counted in its config's bf16 it would be ~1,250 GiB."""
    est = estimate(compose("model=deepseek_v3", "hardware=auto"))
    bf16_bytes = est.params_total * 2 / GIB
    assert est.checkpoint_gib < 0.55 * bf16_bytes  # block weights in 1 byte, the rest (embeddings, norms) in 2
    assert 600 < est.checkpoint_gib < 700 and any("FP8" in n for n in est.notes)
