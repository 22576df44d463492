"""Which tokens carry the outlier features and the massive activations: per-(dim, token) hit counters on the device."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from outlier_lab.analysis.capture import HIDDEN, SiteProbe
from outlier_lab.analysis.detectors import Detector, JobContext, MemoryNeed, MemoryShape
from outlier_lab.analysis.detectors._shared import MassiveConfig, is_delimiter
from outlier_lab.arch.sites import SiteMap
from outlier_lab.config import DetectorConfig
from outlier_lab.errors import UserError
from outlier_lab.markdown import fmt

FEATURES, MASSIVE = "features", "massive"


@dataclass
class TokenAttributionConfig:
    """`detector.token_attribution`: the schema of its YAML."""

    # Count, per hidden dim, which token ids carry its hits: site inputs with |x| >= detector.alpha (the headline
    # outlier features) and block outputs passing detector.massive's criterion (when massive runs).
    enabled: bool = False
    # Tokens listed per dim in results.json and report.md.
    top_tokens: int = 5

    def __post_init__(self) -> None:
        if self.top_tokens < 1:
            raise UserError(f"detector.token_attribution.top_tokens={self.top_tokens} must be >= 1")


class TokenCounter:
    """Per (token id seen so far, dim): hit count and max |x|; per dim: hits at position 0 and in all.

    Token ids get columns as they first appear (the job's distinct ids, at most min(vocab, tokens)), so the state
    grows with the windows' vocabulary, never with their length. Nothing but these counters leaves `observe`.
    """

    def __init__(self, hidden: int, device: torch.device | str):
        self.hidden, self.device = hidden, torch.device(device)
        self.count = torch.zeros(0, hidden, dtype=torch.int32, device=self.device)
        self.max_abs = torch.zeros(0, hidden, dtype=torch.float32, device=self.device)
        self.at_first = torch.zeros(hidden, dtype=torch.int64, device=self.device)
        self.total = torch.zeros(hidden, dtype=torch.int64, device=self.device)

    def grow(self, rows: int) -> None:
        if rows > self.count.shape[0]:
            extra = rows - self.count.shape[0]
            self.count = torch.cat([self.count, self.count.new_zeros(extra, self.hidden)])
            self.max_abs = torch.cat([self.max_abs, self.max_abs.new_zeros(extra, self.hidden)])

    @torch.no_grad()
    def fold(self, columns: torch.Tensor, absx: torch.Tensor, mask: torch.Tensor) -> None:
        """columns [B, T]: each position's token row; absx, mask [B, T, D]: |x| and which of them are hits."""
        flat_mask = mask.reshape(-1, self.hidden)
        rows = columns.reshape(-1)
        self.count.index_add_(0, rows, flat_mask.to(torch.int32))
        hit_abs = torch.where(flat_mask, absx.reshape(-1, self.hidden), torch.zeros((), device=absx.device))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="index_reduce")  # "in beta": its amax is what we need
            self.max_abs.index_reduce_(0, rows, hit_abs, "amax")
        self.at_first += mask[:, 0, :].sum(dim=0)
        self.total += mask.sum(dim=(0, 1))


class TokenAttribution(Detector):
    """For every headline outlier dim and massive-activation dim: the tokens carrying its hits (ids, text, counts,
    max |x|) and the share of its hits at position 0 and on delimiter tokens."""

    name = "token_attribution"
    section = "token_attribution"
    settings = TokenAttributionConfig
    order = 30  # after llm_int8 (headline dims) and massive (its dims)
    comparison_columns = ("top_token_per_dim",)

    @classmethod
    def check(cls, cfg: DictConfig, hf_config: Any) -> None:
        cls._settings(cfg)

    @staticmethod
    def _settings(cfg: DictConfig) -> TokenAttributionConfig:
        return OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(TokenAttributionConfig), cfg.detector.token_attribution)
        )

    def _massive_on(self) -> bool:
        node = self.cfg.detector.get("massive")
        return bool(node is not None and node.get("enabled", False))

    def probes(
        self,
        model: torch.nn.Module,
        site_map: SiteMap,
        site_probes: Sequence[SiteProbe],
        widths: Dict[str, int],
        device: torch.device,
    ) -> List[SiteProbe]:
        self.options = self._settings(self.cfg)
        self.criteria = DetectorConfig.of(self.cfg.detector)
        self.massive = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(MassiveConfig), self.cfg.detector.get("massive") or {})
        )
        text_config = model.config.get_text_config()
        hidden, self.device = text_config.hidden_size, torch.device(device)
        self.column_of = torch.full((int(text_config.vocab_size),), -1, dtype=torch.int64, device=self.device)
        self.token_ids: List[int] = []
        self.counters = {FEATURES: TokenCounter(hidden, device)}
        wanted = [p for p in site_probes if p.space == HIDDEN and not p.output]
        if self._massive_on():
            self.counters[MASSIVE] = TokenCounter(hidden, device)
            wanted += [
                SiteProbe(block, slot, "block_out", site_map.block_path(block), "block_out", output=True)
                for slot, block in enumerate(site_map.block_indices)
            ]
        self._columns: Optional[torch.Tensor] = None
        return wanted

    def start_batch(self, input_ids: torch.Tensor) -> None:
        ids = input_ids.to(self.device)
        fresh = torch.unique(ids[self.column_of[ids] < 0])  # one small sync per batch, before its forward
        if fresh.numel():
            self.column_of[fresh] = torch.arange(
                len(self.token_ids), len(self.token_ids) + fresh.numel(), device=self.device
            )
            self.token_ids += fresh.tolist()
            for counter in self.counters.values():
                counter.grow(len(self.token_ids))
        self._columns = self.column_of[ids]

    def suspend_batch(self) -> Any:
        state, self._columns = self._columns, None
        return state

    def resume_batch(self, state: Any) -> None:
        self._columns = state

    def end_batch(self) -> None:
        self._columns = None

    @torch.no_grad()
    def observe(self, probe: SiteProbe, x: Any) -> None:
        x = x[0] if isinstance(x, (tuple, list)) else x
        batch, seq_len = self._columns.shape
        x = x.reshape(batch, seq_len, -1).to(self.device, torch.float32)
        absx = x.abs()
        if probe.output:
            median = absx.reshape(batch, -1).median(dim=1).values
            mask = (absx > self.massive.min_abs) & (absx >= (self.massive.min_ratio * median)[:, None, None])
            self.counters[MASSIVE].fold(self._columns, absx, mask)
            return
        if self.criteria.alpha_mode == "rms":
            # The headline's scale-free criterion: |x| >= alpha x the RMS of this site input in this sequence.
            rms = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True) / (seq_len * x.shape[2]) ** 0.5
            absx = absx / rms.clamp_min(torch.finfo(torch.float32).tiny)
        self.counters[FEATURES].fold(self._columns, absx, absx >= self.criteria.alpha)

    def finalize(self, ctx: JobContext) -> Dict[str, Any]:
        top = self.options.top_tokens
        ids = np.array(self.token_ids, dtype=np.int64)
        texts = {int(i): ctx.tokenizer.decode([int(i)]) for i in ids}
        special = set(getattr(ctx.tokenizer, "all_special_ids", []) or [])
        delimiter = np.array([is_delimiter(texts[int(i)], int(i), special) for i in ids], dtype=bool)
        wanted = {
            FEATURES: [f["dim"] for f in ctx.results.get("outlier_features", [])],
            MASSIVE: list((ctx.results.get("massive") or {}).get("summary", {}).get("dims", [])),
        }
        section: Dict[str, Any] = dict(
            criteria=dict(
                features=f"site inputs in the hidden space, |x| >= {self.criteria.alpha:g}"
                + (" x RMS" if self.criteria.alpha_mode == "rms" else ""),
                massive=(
                    f"block outputs, |x| > {self.massive.min_abs:g} and >= {self.massive.min_ratio:g}x the median |x|"
                )
                if MASSIVE in self.counters
                else None,
            ),
            distinct_tokens=int(ids.size),
        )
        for kind, counter in self.counters.items():
            count, max_abs = counter.count.cpu().numpy(), counter.max_abs.cpu().numpy()
            at_first, total = counter.at_first.cpu().numpy(), counter.total.cpu().numpy()
            rows = []
            for dim in wanted[kind]:
                hits = int(total[dim])
                order = np.lexsort((-max_abs[:, dim], -count[:, dim]))[:top]
                rows.append(
                    dict(
                        dim=int(dim),
                        hits=hits,
                        first_position_frac=float(at_first[dim] / hits) if hits else None,
                        delimiter_frac=float(count[delimiter, dim].sum() / hits) if hits else None,
                        top_tokens=[
                            dict(
                                token_id=int(ids[r]),
                                text=texts[int(ids[r])],
                                count=int(count[r, dim]),
                                max_abs=float(max_abs[r, dim]),
                            )
                            for r in order
                            if count[r, dim] > 0
                        ],
                    )
                )
            section[kind] = rows
        return section

    @staticmethod
    def report_section(section: Dict[str, Any]) -> List[str]:
        lines = ["## Which tokens carry them", ""]
        for kind, title in ((FEATURES, "Outlier features"), (MASSIVE, "Massive activations")):
            rows = section.get(kind)
            if not rows:
                continue
            lines += [
                f"{title} ({section['criteria'][kind]}):",
                "",
                "| dim | hits | at position 0 | on delimiters | top tokens (count, max abs) |",
                "|---|---|---|---|---|",
            ]
            for r in rows[:20]:
                tokens = ", ".join(f"{t['text']!r} x{t['count']} ({t['max_abs']:.1f})" for t in r["top_tokens"])
                lines.append(
                    f"| {r['dim']} | {r['hits']} | {fmt(r['first_position_frac'], 2)} | "
                    f"{fmt(r['delimiter_frac'], 2)} | {fmt(tokens)} |"
                )
            lines.append("")
        return lines

    @staticmethod
    def comparison_row(section: Dict[str, Any]) -> Dict[str, Any]:
        rows = section.get(FEATURES) or []
        return dict(
            top_token_per_dim=";".join(f"{r['dim']}:{r['top_tokens'][0]['text']!r}" for r in rows if r["top_tokens"])
        )

    @staticmethod
    def comparison_markdown(rows: Sequence[Dict[str, Any]]) -> List[str]:
        rows = [r for r in rows if r.get("top_token_per_dim") is not None]
        if not rows:
            return []
        lines = ["", "## Top token of each headline dim", "", "| job | model | dim:token |", "|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['job']} | {fmt(r['model'])} | {fmt(r['top_token_per_dim'] or None)} |")
        return lines

    @classmethod
    def memory(cls, cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
        # Per (distinct token id, dim), per counter set: int32 count and fp32 max; at most min(vocab, tokens seen)
        # ids, bounded here by the vocabulary.
        sets = 2 if (cfg.detector.get("massive") or {}).get("enabled", False) else 1
        state = sets * shape.vocab_size * shape.hidden * (4 + 4) + 2 * 2 * shape.hidden * 8
        # Observing one probe: its fp32 copy, |x|, the hit mask and the masked |x| (the median's sort on outputs).
        return MemoryNeed(state=state, observe=shape.tokens * shape.hidden * (4 + 4 + 1 + 4 + 4))
