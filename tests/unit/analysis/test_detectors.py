"""Detector plug-ins: the registry, the typed settings nodes, probe routing and the summed memory estimate."""

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from outlier_lab.analysis.capture import SiteProbe, plan_probes
from outlier_lab.analysis.detectors import (
    Detector,
    MemoryShape,
    memory_total,
    merge_probes,
    registry,
    selected,
    settings_nodes,
)
from outlier_lab.analysis.detectors.massive import MassiveConfig
from outlier_lab.analysis.engines.resident import analyze
from outlier_lab.arch.sites import discover_sites
from outlier_lab.config import SITES, run_schema


def job(**detector):
    return OmegaConf.merge(run_schema(settings_nodes()), {"detector": detector})


def test_every_shipped_detector_is_found_in_run_order():
    names = [d.name for d in registry()]
    assert names == [
        "llm_int8",
        "massive",
        "perplexity",
        "ablation",
        "super_experts",
        "super_weights",
        "token_attribution",
    ]
    assert [d.name for d in selected(job())] == ["llm_int8"]
    assert [d.name for d in selected(job(massive={"enabled": True}))] == ["llm_int8", "massive"]
    ablation = OmegaConf.merge(job(), {"analysis": {"mode": "ablation"}})
    assert [d.name for d in selected(ablation)] == ["llm_int8", "ablation"]


def test_plugin_settings_are_typed_nodes_of_the_schema():
    schema = run_schema(settings_nodes())
    assert OmegaConf.get_type(schema.detector.massive) is MassiveConfig
    with pytest.raises(ConfigKeyError):
        OmegaConf.merge(schema, {"detector": {"massive": {"min_abz": 3}}})
    with pytest.raises(ValidationError):
        OmegaConf.merge(schema, {"detector": {"massive": {"min_abs": "big"}}})


def test_probes_are_merged_once_each_in_execution_order():
    a = SiteProbe(0, 0, "mlp_in", "layers.0.mlp", "hidden")
    b = SiteProbe(0, 0, "attn_in", "layers.0.q", "hidden")
    out = SiteProbe(0, 0, "block_out", "layers.0", "block_out", output=True)
    later = SiteProbe(1, 1, "attn_in", "layers.1.q", "hidden")
    merged = merge_probes([[later, a, b], [out, a]], SITES)
    assert merged == [b, a, out, later]


class Recorder(Detector):
    """A detector of its own, handed to analyze directly (the registry scans outlier_lab/detectors/ only): it asks
    for the mlp inputs alone."""

    name = "recorder"

    def probes(self, model, site_map, site_probes, widths, device):
        self.seen, self.batches = [], []
        return [p for p in site_probes if p.site == "mlp_in"]

    def start_batch(self, input_ids):
        self.batches.append(tuple(input_ids.shape))

    def observe(self, probe, x):
        self.seen.append((probe.block, tuple(x.shape)))


def test_each_detector_observes_exactly_the_probes_it_asked_for(tiny_checkpoint):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_checkpoint("llama"), dtype=torch.float32).eval()
    site_map = discover_sites(model, ["attn_in", "mlp_in"], [0, 2])
    recorder, int8 = Recorder(job()), selected(job())[0]
    tokens = torch.randint(0, model.config.vocab_size, (3, 16))
    analyze(model, site_map, tokens, [int8, recorder], batch_size=2, progress=False)
    hidden = model.config.hidden_size
    assert recorder.batches == [(2, 16), (1, 16)]
    assert recorder.seen == [(0, (2, 16, hidden)), (2, (2, 16, hidden)), (0, (1, 16, hidden)), (2, (1, 16, hidden))]
    # The headline detector still saw every site: its reducer counted all three sequences.
    assert int8.accumulators["hidden"].num_sequences == 3


def test_memory_of_the_selected_detectors_is_summed():
    shape = MemoryShape(
        batch=2,
        seq_len=16,
        hidden=64,
        act_bytes=4,
        widths={"hidden": 64},
        analyzed_blocks=4,
        vocab_size=100,
        tied_embeddings=False,
        device="cpu",
    )
    alone = memory_total(job(), shape)
    both = memory_total(job(massive={"enabled": True}), shape)
    massive = next(d for d in registry() if d.name == "massive").memory(job(), shape)
    assert both.state == alone.state + massive.state and massive.state > 0
    assert both.observe == max(alone.observe, massive.observe)
    # The origin detectors' counters join the estimate: token attribution's per-(token, dim) counters, one set per
    # kind of hit (features, and massive when it runs), int32 count and fp32 max each.
    origins = {name: {"enabled": True} for name in ("massive", "super_experts", "super_weights", "token_attribution")}
    added = memory_total(job(**origins), shape).state - both.state
    by_name = {d.name: d.memory(job(**origins), shape).state for d in registry()}
    assert added == by_name["super_experts"] + by_name["super_weights"] + by_name["token_attribution"]
    assert by_name["token_attribution"] >= 2 * 100 * 64 * 8 and by_name["super_experts"] > 0
    ablation = memory_total(OmegaConf.merge(job(), {"analysis": {"mode": "ablation"}}), shape)
    assert ablation.lm_head == 100 * 64 * 4 and ablation.extra > 0 and alone.lm_head == 0
    # Ablation and perplexity both need the head: it is loaded, and counted, once.
    both_heads = memory_total(OmegaConf.merge(job(), {"analysis": {"mode": "ablation", "perplexity": True}}), shape)
    assert both_heads.lm_head == ablation.lm_head and both_heads.extra > ablation.extra


def test_plan_probes_feed_the_headline_widths(tiny_checkpoint):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_checkpoint("qwen3_moe"), dtype=torch.float32).eval()
    site_map = discover_sites(model)
    probes, widths = plan_probes(model, site_map)
    int8 = selected(job())[0]
    assert int8.probes(model, site_map, probes, widths, torch.device("cpu")) == probes
    assert set(int8.reducers) == set(widths)
