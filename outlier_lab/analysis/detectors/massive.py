"""Massive activations (Sun et al. 2024): huge scalars in block outputs, streamed on the device like llm_int8."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from outlier_lab.analysis.capture import SiteProbe
from outlier_lab.analysis.detectors import Detector, JobContext, MemoryNeed, MemoryShape
from outlier_lab.analysis.detectors._shared import MassiveConfig, is_delimiter
from outlier_lab.arch.sites import SiteMap
from outlier_lab.loading.windows import special_ids
from outlier_lab.markdown import fmt
from outlier_lab.results import atomic_write_bytes

SPACE = "block_out"
SITE = "block_out"
HITS_FILE = "massive_hits.parquet"


# Tokens that Sun et al. found carrying massive activations besides the first one: punctuation and line breaks.
class MassiveReducer:
    """Per analyzed block: exact hit counts per dim, hit max |x|, mean top-3 and median |x|; a bounded hit list.

    On a GPU nothing in `observe` synchronizes with the host: candidate hits are picked with a fixed-size topk and
    copied to the CPU once per batch in `end_batch`. On the CPU, where a sync costs nothing, `nonzero` and a numpy
    partition for the median are several times cheaper than topk and torch.median.
    """

    def __init__(
        self,
        criteria: MassiveConfig,
        block_indices: Sequence[int],
        hidden: int,
        device: torch.device | str = "cpu",
        sync_free: Optional[bool] = None,
    ):
        self.criteria = criteria
        self.block_indices = list(block_indices)
        self.hidden = hidden
        self.device = torch.device(device)
        self.sync_free = self.device.type == "cuda" if sync_free is None else sync_free
        slots = len(self.block_indices)
        self.hit_count = torch.zeros(slots, hidden, dtype=torch.int64, device=self.device)
        self.hit_max = torch.zeros(slots, hidden, dtype=torch.float32, device=self.device)
        self.top3_sum = torch.zeros(slots, 3, dtype=torch.float64, device=self.device)
        self.median_sum = torch.zeros(slots, dtype=torch.float64, device=self.device)
        self.num_sequences = 0
        self.hits: List[Dict[str, np.ndarray]] = []
        self.num_stored = 0
        self._pending: List[tuple] = []
        self._shape: Optional[tuple] = None

    def start_batch(self, batch: int, seq_len: int) -> None:
        self._shape = (batch, seq_len)
        self._pending = []

    def suspend_batch(self) -> tuple:
        """Hand out the open batch's state (the streamed engine keeps one per batch while it runs a block)."""
        state, self._shape, self._pending = (self._shape, self._pending), None, []
        return state

    def resume_batch(self, state: tuple) -> None:
        self._shape, self._pending = state

    @torch.no_grad()
    def observe(self, slot: int, output: Any) -> None:
        """Fold one block's output (the residual stream, [B, T, D]; tuples unwrapped) into the state."""
        x = output[0] if isinstance(output, (tuple, list)) else output
        batch, seq_len = self._shape
        x = x.reshape(batch, seq_len, -1).to(self.device, torch.float32)
        absx = x.abs()
        flat = absx.reshape(batch, -1)
        median = self._median(flat)
        mask = (absx > self.criteria.min_abs) & (absx >= (self.criteria.min_ratio * median)[:, None, None])
        self.top3_sum[slot] += flat.topk(min(3, flat.shape[1]), dim=1).values.double().sum(dim=0)
        self.median_sum[slot] += median.double().sum()
        cap = self.criteria.hits_per_block_batch
        if self.sync_free:
            self.hit_count[slot] += mask.sum(dim=(0, 1))
            hit_abs = torch.where(mask, absx, torch.zeros((), device=self.device))
            torch.maximum(self.hit_max[slot], hit_abs.amax(dim=(0, 1)), out=self.hit_max[slot])
            values, index = hit_abs.reshape(-1).topk(min(cap, hit_abs.numel()))
            self._pending.append((slot, values, x.reshape(-1)[index], index))
            return
        index = mask.reshape(-1).nonzero().squeeze(1)
        if index.numel() == 0:
            return
        dims = index % self.hidden
        values = absx.reshape(-1)[index]
        self.hit_count[slot].index_add_(0, dims, torch.ones_like(dims))
        self.hit_max[slot].scatter_reduce_(0, dims, values, reduce="amax")
        if index.numel() > cap:
            index = index[values.topk(cap).indices]
        self._pending.append((slot, absx.reshape(-1)[index], x.reshape(-1)[index], index))

    def _median(self, flat: torch.Tensor) -> torch.Tensor:
        """Per-row median |x| (torch.median's lower median for an even count)."""
        if flat.device.type != "cpu":
            return flat.median(dim=1).values
        k = (flat.shape[1] - 1) // 2
        return torch.from_numpy(np.partition(flat.numpy(), k, axis=1)[:, k].copy())

    def end_batch(self) -> None:
        batch, seq_len = self._shape
        for slot, magnitude, signed, index in self._pending:
            magnitude, signed, index = magnitude.cpu().numpy(), signed.cpu().numpy(), index.cpu().numpy()
            keep = magnitude > 0  # non-hits were zeroed before the topk
            room = self.criteria.max_hits - self.num_stored
            index, signed = index[keep][: max(room, 0)], signed[keep][: max(room, 0)]
            if index.size == 0:
                continue
            b, t, d = np.unravel_index(index, (batch, seq_len, self.hidden))
            self.hits.append(
                dict(
                    block=np.full(index.size, self.block_indices[slot], dtype=np.int64),
                    sequence=(b + self.num_sequences).astype(np.int64),
                    position=t.astype(np.int64),
                    dim=d.astype(np.int64),
                    value=signed.astype(np.float64),
                )
            )
            self.num_stored += index.size
        self.num_sequences += batch
        self._pending, self._shape = [], None

    def hit_table(self) -> Dict[str, np.ndarray]:
        keys = ("block", "sequence", "position", "dim", "value")
        if not self.hits:
            return {k: np.zeros(0, dtype=np.float64 if k == "value" else np.int64) for k in keys}
        table = {k: np.concatenate([h[k] for h in self.hits]) for k in keys}
        order = np.lexsort((table["dim"], table["position"], table["block"], table["sequence"]))
        return {k: v[order] for k, v in table.items()}


def token_texts(tokenizer, ids: Sequence[int]) -> Dict[int, str]:
    """Readable text of each distinct token id (byte-level tokens decoded, not shown as Ġ/Ċ)."""
    return {int(i): tokenizer.decode([int(i)]) for i in sorted(set(int(i) for i in ids))}


def finalize(
    reducer: MassiveReducer, tokens: torch.Tensor, tokenizer, bos_id: Optional[int], prepended_bos: bool
) -> tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """The results.json `massive` section and the full hit table (token text, BOS and delimiter marks added)."""
    table = reducer.hit_table()
    ids = tokens[table["sequence"], table["position"]].numpy() if table["sequence"].size else np.zeros(0, np.int64)
    texts = token_texts(tokenizer, ids)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    table["token_id"] = ids.astype(np.int64)
    table["token"] = np.array([texts[int(i)] for i in ids], dtype=object)
    table["is_bos"] = (table["position"] == 0) & prepended_bos & (ids == (bos_id if bos_id is not None else -1))
    table["is_delimiter"] = ~table["is_bos"] & np.array(
        [is_delimiter(texts[int(i)], int(i), special) for i in ids], dtype=bool
    )

    counts = reducer.hit_count.cpu().numpy()
    hit_max = reducer.hit_max.cpu().numpy()
    n = max(reducer.num_sequences, 1)
    top3 = reducer.top3_sum.cpu().numpy() / n
    medians = reducer.median_sum.cpu().numpy() / n
    dims = []
    for d in np.nonzero(counts.sum(axis=0))[0]:
        rows = table["dim"] == d
        tok_counts: Dict[str, int] = {}
        for text in table["token"][rows]:
            tok_counts[text] = tok_counts.get(text, 0) + 1
        dims.append(
            dict(
                dim=int(d),
                hits=int(counts[:, d].sum()),
                max_abs=float(hit_max[:, d].max()),
                blocks=[reducer.block_indices[s] for s in np.nonzero(counts[:, d])[0]],
                positions=sorted({int(p) for p in table["position"][rows]})[:20],
                bos_frac=float(table["is_bos"][rows].mean()) if rows.any() else None,
                delimiter_frac=float(table["is_delimiter"][rows].mean()) if rows.any() else None,
                top_tokens=sorted(tok_counts.items(), key=lambda kv: -kv[1])[:5],
            )
        )
    dims.sort(key=lambda f: (-f["hits"], f["dim"]))
    num_hits = int(counts.sum())
    stored = int(table["dim"].size)
    top = np.argsort(-np.abs(table["value"]), kind="stable")[:20]
    section = dict(
        criteria=dict(
            min_abs=reducer.criteria.min_abs,
            min_ratio=reducer.criteria.min_ratio,
            median_over="one sequence's block output (all positions and dims)",
            measured="block outputs",
        ),
        summary=dict(
            num_hits=num_hits,
            hits_stored=stored,
            truncated=stored < num_hits,
            max_abs=float(hit_max.max()) if hit_max.size else 0.0,
            dims=[f["dim"] for f in dims],
            first_block=min((b for f in dims for b in f["blocks"]), default=None),
            bos_frac=float(table["is_bos"].mean()) if stored else None,
            delimiter_frac=float(table["is_delimiter"].mean()) if stored else None,
        ),
        dims=dims,
        per_block=[
            dict(
                block=b,
                top1=float(top3[s, 0]),
                top2=float(top3[s, 1]) if top3.shape[1] > 1 else None,
                top3=float(top3[s, 2]) if top3.shape[1] > 2 else None,
                median=float(medians[s]),
                hits=int(counts[s].sum()),
            )
            for s, b in enumerate(reducer.block_indices)
        ],
        top_hits=[
            dict(
                block=int(table["block"][i]),
                sequence=int(table["sequence"][i]),
                position=int(table["position"][i]),
                token=str(table["token"][i]),
                dim=int(table["dim"][i]),
                value=float(table["value"][i]),
                is_bos=bool(table["is_bos"][i]),
                is_delimiter=bool(table["is_delimiter"][i]),
            )
            for i in top
        ],
        hits_file=HITS_FILE,
    )
    return section, table


def write_hits(path: Path, table: Dict[str, np.ndarray]) -> None:
    """Every stored hit as one Parquet row: block, sequence, position, dim, value, token_id, token, is_bos, is_delimiter."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {k: pa.array(list(v) if v.dtype == object else v) for k, v in table.items()}
    sink = io.BytesIO()
    pq.write_table(pa.table(arrays), sink)
    atomic_write_bytes(path, sink.getvalue())


def markdown_section(section: Dict[str, Any]) -> List[str]:
    """report.md lines for one run's massive activations."""
    s, c = section["summary"], section["criteria"]
    lines = [
        "## Massive activations (Sun et al. 2024)",
        "",
        f"Block outputs with |x| > {c['min_abs']:g} and >= {c['min_ratio']:g}x the median |x| of their hidden "
        f"state: {s['num_hits']} hits in dims {s['dims'][:20]}"
        + (f", from block {s['first_block']}" if s["first_block"] is not None else "")
        + (
            f"; {100 * s['bos_frac']:.0f}% on BOS, {100 * s['delimiter_frac']:.0f}% on delimiters"
            if s["bos_frac"] is not None
            else ""
        )
        + f". All stored hits: `{section['hits_file']}`.",
        "",
    ]
    if section["dims"]:
        lines += ["| dim | hits | max abs | blocks | positions | top tokens |", "|---|---|---|---|---|---|"]
        for d in section["dims"][:20]:
            tokens = ", ".join(f"{text!r} x{n}" for text, n in d["top_tokens"]).replace("|", "\\|")
            lines.append(
                f"| {d['dim']} | {d['hits']} | {d['max_abs']:.1f} | {d['blocks'][0]}-{d['blocks'][-1]} "
                f"({len(d['blocks'])}) | {d['positions'][:8]} | {tokens} |"
            )
    return lines + [""]


class Massive(Detector):
    """Block outputs with |x| > min_abs and >= min_ratio x the median |x| of their hidden state."""

    name = "massive"
    section = "massive"
    settings = MassiveConfig
    order = 10
    comparison_columns = ("massive_hits", "massive_dims", "massive_max_abs", "massive_bos_frac")

    def probes(
        self,
        model: torch.nn.Module,
        site_map: SiteMap,
        site_probes: Sequence[SiteProbe],
        widths: Dict[str, int],
        device: torch.device,
    ) -> List[SiteProbe]:
        settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MassiveConfig), self.cfg.detector.massive))
        self.reducer = MassiveReducer(
            settings, site_map.block_indices, model.config.get_text_config().hidden_size, device
        )
        return [
            SiteProbe(block, slot, SITE, site_map.block_path(block), SPACE, output=True)
            for slot, block in enumerate(site_map.block_indices)
        ]

    def start_batch(self, input_ids: torch.Tensor) -> None:
        self.reducer.start_batch(*input_ids.shape)

    def observe(self, probe: SiteProbe, x: Any) -> None:
        self.reducer.observe(probe.slot, x)

    def suspend_batch(self) -> Any:
        return self.reducer.suspend_batch()

    def resume_batch(self, state: Any) -> None:
        self.reducer.resume_batch(state)

    def end_batch(self) -> None:
        self.reducer.end_batch()

    def finalize(self, ctx: JobContext) -> Dict[str, Any]:
        ds = ctx.cfg.dataset
        bos_id, _ = special_ids(ctx.tokenizer, ds.bos_token)
        section, self._hits = finalize(
            self.reducer, ctx.tokens, ctx.tokenizer, bos_id, bool(ds.prepend_bos and bos_id is not None)
        )
        return section

    def write_files(self, out_dir) -> None:
        write_hits(Path(out_dir) / HITS_FILE, self._hits)

    report_section = staticmethod(markdown_section)

    @staticmethod
    def comparison_row(section: Dict[str, Any]) -> Dict[str, Any]:
        s = section.get("summary", {})
        return dict(
            massive_hits=s.get("num_hits"),
            massive_dims=len(s.get("dims") or []),
            massive_max_abs=s.get("max_abs"),
            massive_bos_frac=s.get("bos_frac"),
        )

    @staticmethod
    def comparison_markdown(rows: Sequence[Dict[str, Any]]) -> List[str]:
        rows = [r for r in rows if r["massive_hits"] is not None]
        if not rows:
            return []
        lines = [
            "",
            "## Massive activations (Sun et al. 2024)",
            "",
            "| job | model | hits | dims | max abs | share of hits on BOS |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['job']} | {fmt(r['model'])} | {r['massive_hits']} | {r['massive_dims']} | "
                f"{fmt(r['massive_max_abs'])} | {fmt(r['massive_bos_frac'], 2)} |"
            )
        return lines

    @classmethod
    def memory(cls, cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
        slots, d, n = shape.analyzed_blocks, shape.hidden, shape.tokens
        # Per block: int64 hit counts and fp32 hit max per dim, fp64 top-3 and median sums.
        state = slots * d * (8 + 4) + slots * 4 * 8
        # Observing one block output: its fp32 copy (none for fp32 on CPU), |x|, the median's (CPU) or the
        # masked |x|'s (GPU) fp32 buffer, and three bool masks.
        copy = 0 if (shape.act_bytes == 4 and shape.device == "cpu") else 4
        return MemoryNeed(state=state, observe=n * d * (copy + 4 + 4 + 3))
