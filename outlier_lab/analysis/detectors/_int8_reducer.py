"""LLM.int8() outlier-feature criteria as a streaming, on-device, fp32 reduction over blocks and sequences."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from outlier_lab.config import DetectorConfig


def min_count(frac: float, total: int) -> int:
    """Smallest integer count c with c / total >= frac, immune to float rounding (0.06 * 100 must give 6)."""
    return max(0, math.ceil(round(frac * total, 9)))


# The reducers read the thresholds straight from the validated detector config: one class, not a twin.
Criteria = DetectorConfig


def site_step(x: torch.Tensor, pos_hits: torch.Tensor, alpha: float) -> torch.Tensor:
    """The per-site hot path: OR |x| >= alpha into pos_hits [B, T, D] and return max |x| over T as fp32 [B, D].

    This eager version is the reference; on CUDA the same function is compiled into one fused kernel (see
    `fused_site_step`), and tests check the two agree exactly.
    """
    absx = x.abs()
    pos_hits |= absx >= alpha
    return absx.amax(dim=1).float()


_COMPILED: Dict[str, Callable] = {}


def fused_site_step(device: torch.device, mode: str = "auto") -> Callable:
    """`site_step` for `device`: compiled by torch.compile on CUDA (mode auto/on), else the eager reference.

    On CPU the separate passes are memory-bound anyway and compilation costs seconds per shape, so eager is used;
    on a GPU the five elementwise launches per site dominate small models, and one fused kernel removes them.
    """
    want = mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")
    if not want:
        return site_step
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = _guarded(torch.compile(site_step, dynamic=True))
    return _COMPILED["fn"]


def _guarded(compiled: Callable) -> Callable:
    """Fall back to eager for good if compilation fails (no Triton, an old driver): slower, never wrong."""
    state = {"fn": compiled}

    def run(x, pos_hits, alpha):
        try:
            return state["fn"](x, pos_hits, alpha)
        except Exception as err:  # noqa: BLE001 - any compiler failure; the eager twin computes the same thing
            if state["fn"] is site_step:
                raise
            logging.getLogger(__name__).warning(
                "fused reducer kernel unavailable (%s); using eager ops",
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )
            state["fn"] = site_step
            return site_step(x, pos_hits, alpha)

    return run


@dataclass
class BatchStats:
    """Per-sequence statistics of one batch, on the CPU: everything later stages need, nothing more."""

    layer_frac: np.ndarray  # [B, D] fraction of analyzed blocks with a hit
    position_frac: np.ndarray  # [B, D] fraction of positions with a hit in any block
    max_abs: np.ndarray  # [B, D] max |x| over all sites and blocks
    qualifies: np.ndarray  # [B, D] bool: both criteria met in this sequence
    any_hit: np.ndarray  # [B, D] bool


class Int8Reducer:
    """Streams site activations in, block by block, and keeps only compact per-dim state on the model's device.

    Run-level state lives across batches (per-block max |x| and a signed histogram of outlier values);
    batch-level state (per-block hit flags and the per-position hit union) is reset by `start_batch`.
    """

    def __init__(self, criteria: Criteria, num_blocks: int, hidden: int, device: torch.device | str = "cpu"):
        self.criteria = criteria
        self.num_blocks = num_blocks
        self.hidden = hidden
        self.device = torch.device(device)
        nb = criteria.num_bins
        self.block_max = torch.zeros(num_blocks, hidden, dtype=torch.float32, device=self.device)
        # [D, sign(0=+,1=-), bin] counts of |x| >= alpha, for quartiles and one-sidedness.
        self.hist = torch.zeros(hidden * 2 * nb, dtype=torch.int64, device=self.device)
        self._log_alpha = math.log2(criteria.alpha)
        self._batch: Optional[Dict[str, torch.Tensor]] = None
        self._exact: Dict[torch.dtype, bool] = {}
        self._site_step = fused_site_step(self.device)

    def start_batch(self, batch: int, seq_len: int) -> None:
        d, dev = self.hidden, self.device
        self._batch = dict(
            block_hits=torch.zeros(batch, self.num_blocks, d, dtype=torch.bool, device=dev),
            pos_hits=torch.zeros(batch, seq_len, d, dtype=torch.bool, device=dev),
            seq_max=torch.zeros(batch, d, dtype=torch.float32, device=dev),
        )

    def suspend_batch(self) -> Optional[Dict[str, torch.Tensor]]:
        """Hand out the open batch's state (the streamed engine keeps one per batch while it runs a block)."""
        state, self._batch = self._batch, None
        return state

    def resume_batch(self, state: Optional[Dict[str, torch.Tensor]]) -> None:
        self._batch = state

    @torch.no_grad()
    def observe(self, block_slot: int, x: torch.Tensor) -> None:
        """Fold one site's input [B, T, D] (any dtype, any device) of analyzed block `block_slot` into the state."""
        state = self._batch
        assert state is not None, "start_batch() first"
        if x.dim() == 2:  # some MoE blocks flatten tokens before the router
            x = x.view(state["pos_hits"].shape[0], -1, x.shape[-1])
        x = x.to(self.device)
        if not self._exact_in(x.dtype):
            x = x.float()
        # |x|, >= alpha and max are exact in any float dtype when alpha is representable in it, so a bf16 input is
        # compared as is (no full fp32 copy); every value that leaves this method is fp32 or an integer count.
        per_seq_max = self._site_step(x, state["pos_hits"], self.criteria.alpha)
        # max >= alpha <=> some |x| >= alpha, so the block flags come from the [B, D] maxima, not another full pass.
        hit_dims = per_seq_max >= self.criteria.alpha
        state["block_hits"][:, block_slot] |= hit_dims
        torch.maximum(state["seq_max"], per_seq_max, out=state["seq_max"])
        torch.maximum(self.block_max[block_slot], per_seq_max.amax(dim=0), out=self.block_max[block_slot])
        self._histogram(x, hit_dims.any(dim=0))

    def _exact_in(self, dtype: torch.dtype) -> bool:
        exact = self._exact.get(dtype)
        if exact is None:
            exact = (
                dtype == torch.float32 or float(torch.tensor(self.criteria.alpha, dtype=dtype)) == self.criteria.alpha
            )
            self._exact[dtype] = exact
        return exact

    def _bin_index(self, values: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
        nb = self.criteria.num_bins
        magnitude = values.abs().clamp_min(self.criteria.alpha)
        bins = ((magnitude.log2() - self._log_alpha) * self.criteria.bins_per_octave).floor().long().clamp_(0, nb - 1)
        return (dims * 2 + (values < 0).long()) * nb + bins

    def _histogram(self, x: torch.Tensor, dim_hit: torch.Tensor) -> None:
        # Only the few dims with a hit anywhere in this site are binned: gathering those columns costs a sliver of a
        # full pass, and the one sync is on a [D] vector, not on a [B, T, D] mask.
        dims = dim_hit.nonzero().flatten()
        if dims.numel() == 0:
            return
        cols = x.reshape(-1, self.hidden).index_select(1, dims)
        rows, which = (cols.abs() >= self.criteria.alpha).nonzero(as_tuple=True)
        index = self._bin_index(cols[rows, which].float(), dims[which])
        self.hist.index_put_((index,), torch.ones_like(index), accumulate=True)

    @torch.no_grad()
    def end_batch(self) -> BatchStats:
        """Apply the per-sequence criteria (counts per block, not per site) and hand back CPU arrays."""
        state, self._batch = self._batch, None
        seq_len = state["pos_hits"].shape[1]
        block_count = state["block_hits"].sum(dim=1)
        pos_count = state["pos_hits"].sum(dim=1)
        qualifies = (block_count >= min_count(self.criteria.min_layer_frac, self.num_blocks)) & (
            pos_count >= min_count(self.criteria.min_position_frac, seq_len)
        )
        return BatchStats(
            layer_frac=(block_count.double() / self.num_blocks).cpu().numpy(),
            position_frac=(pos_count.double() / seq_len).cpu().numpy(),
            max_abs=state["seq_max"].cpu().numpy(),
            qualifies=qualifies.cpu().numpy(),
            any_hit=(block_count > 0).cpu().numpy(),
        )

    def histogram(self) -> np.ndarray:
        """[D, 2, bins] counts of outlier values (sign 0 positive, 1 negative)."""
        return self.hist.view(self.hidden, 2, self.criteria.num_bins).cpu().numpy()


def histogram_quantiles(hist: np.ndarray, criteria: Criteria, qs=(0.25, 0.5, 0.75)) -> List[float]:
    """Signed quantiles of one dim's outlier values from its [2, bins] histogram (log-interpolated within a bin)."""
    pos, neg = hist[0].astype(np.float64), hist[1].astype(np.float64)
    nb, bpo, alpha = criteria.num_bins, criteria.bins_per_octave, criteria.alpha
    lower = alpha * np.exp2(np.arange(nb) / bpo)
    upper = alpha * np.exp2((np.arange(nb) + 1) / bpo)
    # Ascending signed order: most negative first (high bins of neg), then positives from small to large.
    counts = np.concatenate([neg[::-1], pos])
    lo = np.concatenate([-upper[::-1], lower])
    hi = np.concatenate([-lower[::-1], upper])
    total = counts.sum()
    if total == 0:
        return [float("nan")] * len(qs)
    cum = np.cumsum(counts)
    out = []
    for q in qs:
        target = q * total
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, len(counts) - 1)
        before = cum[i] - counts[i]
        frac = 0.0 if counts[i] == 0 else (target - before) / counts[i]
        a, b = lo[i], hi[i]
        if a > 0:
            value = a * (b / a) ** frac
        else:  # negative bin: interpolate magnitudes from |a| down to |b|
            value = -((-a) * ((-b) / (-a)) ** frac)
        out.append(float(value))
    return out


@dataclass
class RunAccumulator:
    """Folds per-batch statistics into per-dim run totals and the per-(sequence, dim) rows."""

    criteria: Criteria
    hidden: int
    num_sequences: int = 0
    qualified_sequences: np.ndarray = field(init=False)
    layer_frac_sum: np.ndarray = field(init=False)
    position_frac_sum: np.ndarray = field(init=False)
    # Per dim over all sequences: the largest layer_frac and position_frac reached, and the sequences with any hit,
    # which say why a bright dim is not an outlier (which criterion it misses, by how much).
    layer_frac_max: np.ndarray = field(init=False)
    position_frac_max: np.ndarray = field(init=False)
    hit_sequences: np.ndarray = field(init=False)
    rows: List[Dict[str, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.qualified_sequences = np.zeros(self.hidden, dtype=np.int64)
        self.layer_frac_sum = np.zeros(self.hidden, dtype=np.float64)
        self.position_frac_sum = np.zeros(self.hidden, dtype=np.float64)
        self.layer_frac_max = np.zeros(self.hidden, dtype=np.float64)
        self.position_frac_max = np.zeros(self.hidden, dtype=np.float64)
        self.hit_sequences = np.zeros(self.hidden, dtype=np.int64)

    def add(self, stats: BatchStats) -> None:
        q = stats.qualifies
        self.qualified_sequences += q.sum(axis=0)
        self.layer_frac_sum += np.where(q, stats.layer_frac, 0.0).sum(axis=0)
        self.position_frac_sum += np.where(q, stats.position_frac, 0.0).sum(axis=0)
        np.maximum(self.layer_frac_max, stats.layer_frac.max(axis=0, initial=0.0), out=self.layer_frac_max)
        np.maximum(self.position_frac_max, stats.position_frac.max(axis=0, initial=0.0), out=self.position_frac_max)
        self.hit_sequences += stats.any_hit.sum(axis=0)
        seq_idx, dims = np.nonzero(stats.any_hit)
        self.rows.append(
            dict(
                sequence=(seq_idx + self.num_sequences).astype(np.int64),
                dim=dims.astype(np.int64),
                layer_frac=stats.layer_frac[seq_idx, dims],
                position_frac=stats.position_frac[seq_idx, dims],
                max_abs=stats.max_abs[seq_idx, dims].astype(np.float64),
                qualifies=stats.qualifies[seq_idx, dims],
            )
        )
        self.num_sequences += stats.qualifies.shape[0]

    def per_sequence_table(self) -> Dict[str, np.ndarray]:
        keys = ("sequence", "dim", "layer_frac", "position_frac", "max_abs", "qualifies")
        if not self.rows:
            empty = dict(
                sequence=np.int64,
                dim=np.int64,
                layer_frac=np.float64,
                position_frac=np.float64,
                max_abs=np.float64,
                qualifies=bool,
            )
            return {k: np.zeros(0, dtype=empty[k]) for k in keys}
        return {k: np.concatenate([r[k] for r in self.rows]) for k in keys}


def summarize(acc: RunAccumulator, hist: np.ndarray, block_max: np.ndarray, near_misses: int = 24) -> Dict[str, object]:
    """Unique outlier dims across sequences, each with its statistics, the LLM.int8() Table 4 summary row, and the
    `near_misses` brightest dims that are not headline outliers, with the figures that say why."""
    crit = acc.criteria
    n = max(acc.num_sequences, 1)
    dim_max = block_max.max(axis=0) if block_max.size else np.zeros(acc.hidden)
    positives, negatives = hist[:, 0].sum(axis=1), hist[:, 1].sum(axis=1)
    qualified = np.nonzero(acc.qualified_sequences)[0]

    def feature(d: int) -> Dict[str, object]:
        k = int(acc.qualified_sequences[d])
        return dict(
            dim=int(d),
            sequences=k,
            sequences_frac=k / n,
            layer_frac=float(acc.layer_frac_sum[d] / k),
            position_frac=float(acc.position_frac_sum[d] / k),
            max_abs=float(dim_max[d]),
            one_sided=bool(positives[d] == 0 or negatives[d] == 0),
            sign="+" if negatives[d] == 0 else "-" if positives[d] == 0 else "±",
        )

    everything = sorted((feature(d) for d in qualified), key=lambda f: (-f["sequences"], -f["layer_frac"], f["dim"]))
    need = min_count(crit.min_sequences_frac, acc.num_sequences)
    headline = [f for f in everything if f["sequences"] >= max(need, 1)]
    summary: Dict[str, object] = dict(
        num_outlier_features=len(headline),
        num_one_sided=sum(f["one_sided"] for f in headline),
        num_qualified_any_sequence=len(everything),
        num_sequences=acc.num_sequences,
        # Over every dim, outlier or not (`max_abs_dim` says which); `max_abs_headline` over the headline dims only.
        max_abs=float(dim_max.max()) if dim_max.size else 0.0,
        max_abs_dim=int(dim_max.argmax()) if dim_max.size else None,
        max_abs_headline=max((f["max_abs"] for f in headline), default=None),
        most_common=None,
    )
    if everything:
        top = (headline or everything)[0]
        summary["most_common"] = dict(
            dim=top["dim"],
            layers_pct=100.0 * top["layer_frac"],
            positions_pct=100.0 * top["position_frac"],
            quartiles=histogram_quantiles(hist[top["dim"]], crit),
            sequences=top["sequences"],
            # False: no dim reached min_sequences_frac; this is the most frequent dim that qualified at all.
            headline=bool(headline),
        )
    headline_dims = {f["dim"] for f in headline}
    brightest = [int(d) for d in np.argsort(-dim_max, kind="stable") if int(d) not in headline_dims][:near_misses]
    misses = [
        dict(
            dim=d,
            max_abs=float(dim_max[d]),
            sequences=int(acc.qualified_sequences[d]),
            hit_sequences=int(acc.hit_sequences[d]),
            layer_frac_max=float(acc.layer_frac_max[d]),
            position_frac_max=float(acc.position_frac_max[d]),
        )
        for d in brightest
    ]
    return dict(outlier_features=headline, qualified_dims=everything, summary=summary, near_misses=misses)
