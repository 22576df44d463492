"""Detector plug-ins: one interface, and every module of this package that defines one is found and run."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch
from omegaconf import DictConfig

from outlier_lab.analysis.capture import SiteProbe
from outlier_lab.arch.sites import SiteMap


@dataclass
class MemoryShape:
    """What a detector's memory estimate may depend on: one batch of one job on its target device."""

    batch: int
    seq_len: int
    hidden: int
    # Bytes per activation element in the model's dtype.
    act_bytes: int
    # Feature spaces the site probes index (name -> width) and the number of analyzed blocks.
    widths: Dict[str, int]
    analyzed_blocks: int
    vocab_size: int
    tied_embeddings: bool
    device: str
    # resident (the whole model) or streamed (one block at a time: no LM head).
    engine: str = "resident"

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


@dataclass
class MemoryNeed:
    """A detector's share of a job's memory, in bytes, by how long it lives."""

    # Weights it makes the job load (other than the LM head).
    weights: float = 0.0
    # The LM head's weights when it needs the head (loaded once, however many detectors need it).
    lm_head: float = 0.0
    # State alive through the whole forward (reducer state).
    state: float = 0.0
    # Transient while it observes one probe, next to the block's own tensors (a peak phase of its own).
    observe: float = 0.0
    # Memory of its own passes after the capture pass (logits), on top of the forward's peak.
    extra: float = 0.0
    notes: List[str] = field(default_factory=list)


@dataclass
class JobContext:
    """What finalize sees: the job's config, model, windows and the results built so far (headline first)."""

    cfg: DictConfig
    model: torch.nn.Module
    site_map: SiteMap
    tokens: torch.Tensor
    tokenizer: Any
    results: Dict[str, Any]


class Detector:
    """One detector: a streaming reducer over probes, its results section, report section, comparison columns and
    memory estimate. Subclass it in a new module of this package; one YAML under conf/detector/ then enables it.

    Lifecycle per job: `check` (before any weight is read), `loaded` (the resident engine's model), `probes`, then per
    batch `start_batch`, `observe` for each probe it asked for, `end_batch`; after the pass `finalize` (may run its own
    forwards), and `write_files` once every detector has finalized, so a failure writes nothing.
    """

    # Registry name; also the settings node `detector.<name>` when `settings` is set.
    name: ClassVar[str]
    # results.json key of its section (None: the headline detector, whose fields are top-level).
    section: ClassVar[Optional[str]] = None
    # Dataclass of its settings (schema and runtime alike), or None when it reads another config group.
    settings: ClassVar[Optional[type]] = None
    # Run order: detectors that read another's results come after it.
    order: ClassVar[int] = 50
    # Its columns in comparison.csv, in order.
    comparison_columns: ClassVar[Tuple[str, ...]] = ()
    # Whether the job must load the causal-LM head for it (resident engine).
    needs_lm_head: ClassVar[bool] = False
    # Whether it needs the whole model in memory (the resident engine), e.g. for forwards of its own.
    needs_resident: ClassVar[bool] = False
    # Whether it reads the last hidden states, so the forward may not stop after the last analyzed block.
    full_forward: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    @classmethod
    def enabled(cls, cfg: DictConfig) -> bool:
        """Whether this job runs it: by default `detector.<name>.enabled`."""
        node = cfg.detector.get(cls.name)
        return bool(node is not None and node.get("enabled", False))

    @classmethod
    def check(cls, cfg: DictConfig, hf_config: Any) -> None:
        """Reject bad settings with a UserError before anything is loaded."""

    def loaded(self, model: torch.nn.Module, tokenizer: Any) -> None:
        """The model as loaded by the resident engine (the causal LM when a detector needs the head)."""

    def probes(
        self,
        model: torch.nn.Module,
        site_map: SiteMap,
        site_probes: Sequence[SiteProbe],
        widths: Dict[str, int],
        device: torch.device,
    ) -> List[SiteProbe]:
        """Set up its reducer; returns the probes it observes (site probes, whose feature-space widths are given,
        or probes of its own)."""
        return []

    def start_batch(self, input_ids: torch.Tensor) -> None:
        """A new batch of token ids [batch, seq_len] enters the model."""

    def observe(self, probe: SiteProbe, x: Any) -> None:
        pass

    def suspend_batch(self) -> Any:
        """Hand out the open batch's state (the streamed engine keeps one per batch while it runs a block)."""
        return None

    def resume_batch(self, state: Any) -> None:
        pass

    def end_batch(self) -> None:
        pass

    def streamed_head(self, head: torch.nn.Module, config: Any, tokenizer: Any) -> None:
        """The streamed engine's LM head, read after the last block (only for a detector with `full_forward`)."""

    def last_hidden(self, hidden: torch.Tensor) -> None:
        """The streamed engine's last hidden state of the open batch, after the final norm (`full_forward` only)."""

    def finalize(self, ctx: JobContext) -> Dict[str, Any]:
        """Its results: the `section` (or, for the headline detector, top-level fields of results.json)."""
        return {}

    def write_files(self, out_dir) -> None:
        """Write its own result files (after every detector has finalized)."""

    @staticmethod
    def report_section(section: Dict[str, Any]) -> List[str]:
        """report.md lines for its section."""
        return []

    @staticmethod
    def comparison_row(section: Dict[str, Any]) -> Dict[str, Any]:
        """Its comparison columns from one job's section."""
        return {}

    @staticmethod
    def comparison_markdown(rows: Sequence[Dict[str, Any]]) -> List[str]:
        """comparison.md lines for the completed jobs' rows that have its columns."""
        return []

    @classmethod
    def memory(cls, cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
        """Its memory on top of the model's forward."""
        return MemoryNeed()


def registry() -> List[Type[Detector]]:
    """Every detector class defined in this package's modules, in run order."""
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, Detector)
                    and value is not Detector
                    and value.__module__ == module.__name__
                ):
                    _REGISTRY.append(value)
        _REGISTRY.sort(key=lambda d: (d.order, d.name))
    return list(_REGISTRY)


_REGISTRY: List[Type[Detector]] = []


def settings_nodes() -> Dict[str, type]:
    """name -> settings dataclass of every detector that has its own node under `detector`."""
    return {d.name: d.settings for d in registry() if d.settings is not None}


def selected(cfg: DictConfig) -> List[Detector]:
    """This job's detectors, in run order, each validated against the config and ready for a pass."""
    return [d(cfg) for d in registry() if d.enabled(cfg)]


def with_section(results: Dict[str, Any]) -> List[Tuple[Type[Detector], Dict[str, Any]]]:
    """(detector, its section) for every section present in one job's results."""
    return [(d, results[d.section]) for d in registry() if d.section and isinstance(results.get(d.section), dict)]


def merge_probes(groups: Sequence[Sequence[SiteProbe]], site_order: Sequence[str]) -> List[SiteProbe]:
    """One list of distinct probes in execution order: per block, its sites in forward order, then its output."""
    rank = {site: i for i, site in enumerate(site_order)}
    unique = {(p.path, p.output): p for group in groups for p in group}
    return sorted(unique.values(), key=lambda p: (p.block, p.output, rank.get(p.site, len(rank))))


def memory_total(cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
    """The selected detectors' memory, summed (observe: the largest, as probes are observed one at a time)."""
    needs = [d.memory(cfg, shape) for d in registry() if d.enabled(cfg)]
    return MemoryNeed(
        weights=sum(n.weights for n in needs),
        lm_head=max((n.lm_head for n in needs), default=0.0),
        state=sum(n.state for n in needs),
        observe=max((n.observe for n in needs), default=0.0),
        extra=sum(n.extra for n in needs),
        notes=[note for n in needs for note in n.notes],
    )
