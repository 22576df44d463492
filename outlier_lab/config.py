"""Typed Hydra schema: one dataclass per config group, registered in the ConfigStore."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterator, List, Mapping, Optional, get_type_hints

from hydra.core.config_store import ConfigStore
from hydra.plugins.config_source import ConfigLoadError
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict

from outlier_lab.errors import UserError, did_you_mean

SITES = ("attn_in", "attn_out_in", "mlp_in")
# absolute: |x| >= alpha. rms: |x| >= alpha x the RMS of the site input in that sequence.
ALPHA_MODES = ("absolute", "rms")
# The launcher's plan of a job, written where the job can read it; `hardware.planned` names the file.
PLAN_FILE = "plan.json"
# The LLM.int8() outlier-value histogram spans [alpha, alpha * 2**OCTAVES); larger values land in its last bin.
OCTAVES = 14
# The schema's name in Hydra's ConfigStore (conf/config.yaml's defaults list names it).
SCHEMA_NAME = "run_schema"


@dataclass
class ModelConfig:
    # Short name used in job dirs, reports and comparisons.
    name: str = MISSING
    # Where the weights come from: hub (repo id), local (directory) or package (a pip package that ships a checkpoint).
    source: str = "hub"
    # Hub repo id, local checkpoint directory, or python package name, depending on `source`.
    path: Optional[str] = None
    # Hub revision (branch, tag or commit); a sweep resolves it to one commit at plan time for all its jobs.
    revision: str = "main"
    # Weight dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16.
    dtype: str = "auto"
    # Attention kernel passed to transformers (null lets transformers choose, usually sdpa).
    attn_implementation: Optional[str] = None
    # Only for checkpoints whose code lives on the hub; off by default for safety.
    trust_remote_code: bool = False
    # Shipped copy of the checkpoint's config.json, so estimation works offline: a file name under
    # outlier_lab/data/hf_configs/ (package data), or a path to a file.
    config_file: Optional[str] = None
    # Checkpoint quantization as shipped (e.g. mxfp4 for gpt-oss experts); null means none.
    quantization: Optional[str] = None
    # Architecture facts that override the config (tests and offline estimates).
    config_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetConfig:
    # Short name used in reports.
    name: str = MISSING
    # python_docs (offline, stdlib), text_file (a local file) or hub (a `datasets` dataset, streamed).
    source: str = "python_docs"
    # File path for text_file; dataset id for hub.
    path: Optional[str] = None
    # Hub dataset config/subset name (e.g. wikitext-103-raw-v1).
    subset: Optional[str] = None
    # Hub dataset revision (branch, tag or commit); resolved to a commit like model.revision, recorded in results.json.
    revision: str = "main"
    # Hub split to stream.
    split: str = "train"
    # Column holding the text in hub datasets.
    text_field: str = "text"
    # Number of non-overlapping windows analyzed.
    num_sequences: int = 64
    # Tokens per window, BOS included.
    seq_len: int = 256
    # Sequences per forward pass.
    batch_size: int = 4
    # Prepend a BOS token to every window when the tokenizer has one.
    prepend_bos: bool = True
    # Override the BOS token string (null: tokenizer's bos_token, else its cls_token).
    bos_token: Optional[str] = None
    # Cap on documents read from a hub stream (null: read until enough tokens).
    max_documents: Optional[int] = None


@dataclass
class DetectorConfig:
    """What is measured and the LLM.int8() thresholds: the schema of `detector` and, validated, what the reducers
    read. Each other detector plug-in adds its own settings node, `detector.<name>` (outlier_lab/detectors/)."""

    # Detector name recorded in results.
    name: str = "llm_int8"
    # Magnitude threshold: |x| >= alpha is a hit (LLM.int8() uses 6.0).
    alpha: float = 6.0
    # A dim must hit in at least this fraction of analyzed blocks (inclusive).
    min_layer_frac: float = 0.25
    # A dim must hit in at least this fraction of sequence positions (inclusive).
    min_position_frac: float = 0.06
    # Headline features qualify in at least this fraction of sequences.
    min_sequences_frac: float = 0.5
    # Canonical sites measured in every block.
    sites: List[str] = field(default_factory=lambda: list(SITES))
    # Block indices to analyze (null: all blocks).
    layers: Optional[List[int]] = None
    # Dims shown in the heatmap (most frequent outliers first).
    heatmap_top_dims: int = 24
    # Resolution of the outlier-value histogram used for quartiles (bins per factor of two).
    bins_per_octave: int = 32
    # absolute: |x| >= alpha; rms: |x| >= alpha x the RMS of that site input in that sequence (scale-free; all
    # statistics, quartiles and heatmap included, are then in multiples of that RMS).
    alpha_mode: str = "absolute"

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise UserError(f"detector.alpha={self.alpha} must be > 0")
        for name in ("min_layer_frac", "min_position_frac", "min_sequences_frac"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise UserError(f"detector.{name}={value} must be in (0, 1]")
        if self.bins_per_octave < 1:
            raise UserError(f"detector.bins_per_octave={self.bins_per_octave} must be >= 1")
        if self.alpha_mode not in ALPHA_MODES:
            raise UserError(f"detector.alpha_mode={self.alpha_mode!r} is not one of {', '.join(ALPHA_MODES)}")

    @property
    def num_bins(self) -> int:
        return OCTAVES * self.bins_per_octave

    @classmethod
    def of(cls, node: Any) -> "DetectorConfig":
        """The validated thresholds of a composed `detector` node (its plug-in settings nodes are left out)."""
        if isinstance(node, cls):
            return node
        values = {f.name: node.get(f.name) for f in fields(cls) if node.get(f.name) is not None}
        if isinstance(node, DictConfig):
            values = {k: OmegaConf.to_container(v) if isinstance(v, ListConfig) else v for k, v in values.items()}
        return cls(**values)


@dataclass
class HardwareConfig:
    # local runs here; auto picks the cheapest fitting GPU class; a class name fixes it.
    name: str = "local"
    # GPU manufacturer allowed by hardware=auto.
    vendor: str = "nvidia"
    # Fixed GPU class (catalog key) or null for auto/local.
    gpu_class: Optional[str] = None
    # Fixed GPU count (null: the fewest that fit).
    gpu_count: Optional[int] = None
    # Required VRAM = estimated total x this factor (null: the estimator's measured error band for the job's engine
    # and device, outlier_lab/planning/headroom.py).
    vram_safety_factor: Optional[float] = None
    # Minimum host RAM in GiB for a resident job (checkpoint loading goes through CPU memory); a streamed job's
    # floor is computed (two block buffers, hidden states kept on the host, runtime).
    ram_floor_gib: float = 64.0
    # Checkpoint download speed to a rented node, gigabits/s, for the job-time estimate (null: 2.0 = 250 MB/s).
    download_gbps: Optional[float] = None
    # Seconds a rented instance takes to boot and pull its image, for the job-time estimate (null: 180; 0 for your own
    # hosts or a Slurm node).
    provision_s: Optional[float] = None
    # Seconds the job's Python environment takes to set up on a fresh host (null: 150; ~0 where it is cached).
    setup_s: Optional[float] = None
    # GPU catalog YAML (null: the shipped outlier_lab/data/gpus.yaml).
    catalog: Optional[str] = None
    # The remote GPU host has MXFP4 kernels (triton>=3.4 + kernels); false plans dequantized bf16 experts.
    mxfp4_kernels: bool = True
    # Set by a launcher on each job it starts: its plan for that job (a JSON file). The job runs under it and checks
    # the host it landed on, as hardware=local does, instead of planning again.
    planned: Optional[str] = None


@dataclass
class EngineConfig:
    # auto (the cheaper plan, resident where the model fits locally), resident (whole model) or streamed (one block
    # at a time from safetensors shards).
    name: str = "auto"


@dataclass
class AnalysisConfig:
    # detect: find outlier features. ablation: detect, then zero the outlier dims in the attention-projection and
    # FFN inputs and measure next-token top-1 probability, perplexity and bits per byte, vs random dims (Sec. 4.2).
    mode: str = "detect"
    # Random-dims control runs (seeds seed, seed+1, ...); each zeroes as many random non-outlier dims.
    random_seeds: int = 5
    # Sites whose inputs are zeroed (attn_in covers q, k and v; sites outside the residual space are skipped).
    sites: List[str] = field(default_factory=lambda: list(SITES))
    # Dims to zero (null: the detected headline outlier dims of the residual space).
    dims: Optional[List[int]] = None
    # Sequences used for the LM metrics (null: all analyzed sequences).
    num_sequences: Optional[int] = None
    # Perplexity and bits per byte of the analyzed windows, from the same pass (the LM head on the last hidden
    # states, in chunks of logits); needs a checkpoint with a trained next-token head.
    perplexity: bool = False


@dataclass
class ReportConfig:
    # Draw heatmap.png (matplotlib, ~1 s per job); report.heatmap=false skips it in sweeps of many small jobs.
    heatmap: bool = True


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    hardware: HardwareConfig = MISSING
    # What the job does with the model: conf/analysis/{detect,ablation}.yaml.
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    # How the model is held: conf/engine/{auto,resident,streamed}.yaml.
    engine: EngineConfig = field(default_factory=EngineConfig)
    # cpu, cuda or auto (cuda when available).
    device: str = "auto"
    # Seed for anything random (ablation controls, hub shuffles).
    seed: int = 0
    # Show progress bars.
    progress: bool = True
    # What each job writes besides results.json, per_sequence.parquet, tokens.safetensors and report.md.
    report: ReportConfig = field(default_factory=ReportConfig)


def hardware_setting(cfg: Any, name: str) -> Any:
    """cfg.hardware.<name>, or HardwareConfig's default when a hand-built config lacks it: the default lives there only."""
    defaults = {f.name: f.default for f in fields(HardwareConfig)}
    return cfg.hardware.get(name, defaults[name])


def planned_override(path: str) -> str:
    """The override a launcher adds to each job it starts: where its plan for the job is."""
    if "'" in path or "\\" in path:
        raise UserError(
            f"cannot hand the plan file {path!r} to the job: quotes and backslashes are not supported in "
            "its path (hydra.sweep.dir, hydra.launcher.remote_root)"
        )
    return f"hardware.planned='{path}'"


def run_schema(detector_settings: Mapping[str, type]) -> DictConfig:
    """RunConfig with each detector plug-in's settings node under `detector`, so YAML and overrides are typed.

    `detector_settings` (name -> settings dataclass) comes from the caller, usually
    `outlier_lab.analysis.detectors.settings_nodes()`: this leaf module never imports a plug-in.
    """
    schema = OmegaConf.structured(RunConfig)
    with open_dict(schema.detector):
        for name, settings in detector_settings.items():
            schema.detector[name] = OmegaConf.structured(settings)
    return schema


def register_configs(detector_settings: Mapping[str, type]) -> None:
    """Store the schema (with the detectors' settings nodes) so every YAML is validated against it at compose time."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=run_schema(detector_settings))


def registered_detector_settings() -> Dict[str, type]:
    """name -> settings dataclass of the detector nodes in the schema register_configs stored."""
    try:
        detector = ConfigStore.instance().load(f"{SCHEMA_NAME}.yaml").node.detector
    except ConfigLoadError:
        raise RuntimeError("register_configs(settings_nodes()) must run before a config is checked") from None
    own = {f.name for f in fields(DetectorConfig)}
    return {str(name): OmegaConf.get_type(detector, str(name)) for name in detector.keys() if name not in own}


def check_schema(cfg: Any) -> None:
    """Refuse keys the schema does not declare: Hydra's `+detector.alpah=5` adds one silently, and the job would then
    run with the default it meant to change."""
    problems = [
        not_a_setting(key, known)
        for key, known in _unknown_keys(cfg, RunConfig, "", DictConfig, registered_detector_settings())
    ]
    if problems:
        raise UserError("; ".join(problems) + "; fix or drop the override")


def unknown_setting(key: str) -> Optional[str]:
    """Why a dotted override key (`detector.alpah`) is not in the schema, or None when it is (or lies under a node the
    schema leaves free). The schema must be registered first (register_configs)."""
    schema, parts = RunConfig, key.split(".")
    detector_settings = registered_detector_settings()
    for depth, name in enumerate(parts):
        hints, known = _settings(schema, detector_settings)
        if name not in hints:
            return not_a_setting(".".join(parts[: depth + 1]), known)
        schema = hints[name]
        if not dataclasses.is_dataclass(schema):
            return None
    return None


def not_a_setting(key: str, known: List[str]) -> str:
    group, _, name = key.rpartition(".")
    close = did_you_mean(name, known)
    where = f"{group}." if group else ""
    return f"{key} is not a setting of {group or 'the run config'}" + (
        f" (did you mean {where}{close}?)" if close else f" (its settings: {', '.join(known)})"
    )


def _settings(schema: type, detector_settings: Mapping[str, type]) -> tuple:
    """A schema dataclass's field types and names; the detector's also hold each plug-in's settings node."""
    hints = get_type_hints(schema)
    known = [f.name for f in dataclasses.fields(schema)]
    if schema is DetectorConfig:
        hints.update(detector_settings)
        known += list(detector_settings)
    return hints, known


def _unknown_keys(
    node: Any, schema: type, prefix: str, mapping: type, detector_settings: Mapping[str, type]
) -> Iterator[tuple]:
    hints, known = _settings(schema, detector_settings)
    for key in node.keys():
        key = str(key)
        if key not in hints:
            if prefix:  # the top level also holds hydra's own node and experiment-level keys
                yield prefix + key, known
            continue
        if dataclasses.is_dataclass(hints[key]) and isinstance(node.get(key), mapping):
            yield from _unknown_keys(node[key], hints[key], f"{prefix}{key}.", mapping, detector_settings)
