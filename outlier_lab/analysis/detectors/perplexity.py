"""Perplexity and bits per byte in the analysis pass itself: the LM head on the last hidden states, in chunks."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from outlier_lab.analysis.detectors import Detector, JobContext, MemoryNeed, MemoryShape
from outlier_lab.analysis.detectors._shared import require_trained_head, token_bytes
from outlier_lab.errors import UserError

# Positions whose logits exist at once: fp32 [chunk, vocab] plus its log-softmax, never [batch, seq, vocab].
LOGITS_CHUNK_TOKENS = 1024


def logit_transform(config) -> Dict[str, float]:
    """What the model's own CausalLM does to the head's output, read from the config (granite, gemma2, cohere)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    out = {}
    if getattr(text, "logits_scaling", None) not in (None, 1, 1.0):
        out["divide"] = float(text.logits_scaling)
    if getattr(text, "logit_scale", None) not in (None, 1, 1.0):
        out["multiply"] = float(text.logit_scale)
    if getattr(text, "final_logit_softcapping", None):
        out["softcap"] = float(text.final_logit_softcapping)
    return out


class PerplexityReducer:
    """Streams (last hidden states, token ids) batches into the summed next-token NLL and the target bytes."""

    def __init__(
        self,
        head: torch.nn.Module,
        byte_lengths: np.ndarray,
        transform: Optional[Dict[str, float]] = None,
        chunk_tokens: int = LOGITS_CHUNK_TOKENS,
    ):
        self.head, self.byte_lengths, self.chunk = head, byte_lengths, int(chunk_tokens)
        self.transform = transform or {}
        self.nll = 0.0
        self.tokens = self.bytes = 0

    @torch.inference_mode()
    def observe(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> None:
        """Fold one batch in: position t's hidden state predicts token t + 1 (the window's last predicts nothing)."""
        weight = getattr(self.head, "weight", None)
        device = weight.device if isinstance(weight, torch.Tensor) else hidden.device
        states = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        targets = input_ids[:, 1:].reshape(-1).to(device)
        self.bytes += int(self.byte_lengths[targets.cpu().numpy()].sum())
        for start in range(0, states.shape[0], self.chunk):
            logits = self.head(states[start : start + self.chunk].to(device)).float()
            if "divide" in self.transform:
                logits = logits / self.transform["divide"]
            if "multiply" in self.transform:
                logits = logits * self.transform["multiply"]
            if "softcap" in self.transform:
                cap = self.transform["softcap"]
                logits = torch.tanh(logits / cap) * cap
            nll = torch.nn.functional.cross_entropy(logits, targets[start : start + self.chunk], reduction="sum")
            self.nll += float(nll.double())
        self.tokens += int(targets.numel())

    def result(self) -> Dict[str, Any]:
        nll = self.nll / max(self.tokens, 1)
        return dict(
            nll=nll,
            ppl=math.exp(nll),
            bits_per_byte=self.nll / math.log(2) / max(self.bytes, 1),
            tokens=self.tokens,
            bytes=self.bytes,
            logits_chunk_tokens=self.chunk,
            logit_transform=self.transform or None,
        )


@contextlib.contextmanager
def last_hidden_states(base: torch.nn.Module, sink: List[torch.Tensor]) -> Iterator[None]:
    """A forward hook on the base model that hands its last hidden state (after the final norm) to `sink`."""

    if (
        base is getattr(base, "base_model", base)
        and hasattr(base, "get_output_embeddings")
        and base.get_output_embeddings() is not None
    ):
        # e.g. Llama4ForCausalLM names a base_model_prefix it lacks: its output would be logits, not hidden states.
        raise UserError(
            f"analysis.perplexity: {type(base).__name__} does not expose its base model "
            "(model.base_model is the causal LM itself); use analysis.perplexity=false"
        )

    def hook(module, args, output):
        state = getattr(output, "last_hidden_state", None)
        sink.append(state if state is not None else output[0])

    handle = base.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def markdown_section(section: Dict[str, Any]) -> List[str]:
    """report.md lines for the perplexity of the analyzed windows."""
    if section.get("skipped"):
        return ["## Perplexity", "", f"Not computed: {section['skipped']}.", ""]
    return [
        "## Perplexity",
        "",
        f"On the analyzed windows ({section['tokens']} predicted tokens, {section['bytes']} bytes): perplexity "
        f"{section['ppl']:.3f}, {section['bits_per_byte']:.4f} bits per byte (NLL {section['nll']:.4f} nats).",
        "",
    ]


class Perplexity(Detector):
    """analysis.perplexity=true: perplexity and bits per byte of the analyzed windows, from the analysis pass itself
    (the LM head on the last hidden states, in chunks of logits), so it costs no second forward."""

    name = "perplexity"
    section = "perplexity"
    order = 15
    needs_lm_head = True
    full_forward = True
    comparison_columns = ("ppl", "bits_per_byte")
    chunk_tokens = LOGITS_CHUNK_TOKENS

    @classmethod
    def enabled(cls, cfg: DictConfig) -> bool:
        return bool((cfg.get("analysis") or {}).get("perplexity", False))

    @classmethod
    def check(cls, cfg: DictConfig, hf_config: Any) -> None:
        require_trained_head(hf_config, cfg.model.name, "analysis.perplexity=true")

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.reducer: Optional[PerplexityReducer] = None
        self._finals: List[torch.Tensor] = []
        self._hook: Optional[contextlib.ExitStack] = None

    def loaded(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.streamed_head(model.get_output_embeddings(), model.config, tokenizer)

    def streamed_head(self, head: torch.nn.Module, config: Any, tokenizer: Any) -> None:
        self.reducer = PerplexityReducer(
            head,
            token_bytes(tokenizer, config.get_text_config().vocab_size),
            logit_transform(config),
            self.chunk_tokens,
        )

    def last_hidden(self, hidden: torch.Tensor) -> None:
        self._finals.append(hidden)

    def probes(self, model, site_map, site_probes, widths, device) -> list:
        if self.reducer is not None:  # resident; the streamed engine hands the head over after its last block
            self._hook = contextlib.ExitStack()
            self._hook.enter_context(last_hidden_states(model, self._finals))
        return []

    def start_batch(self, input_ids: torch.Tensor) -> None:
        self._ids = input_ids

    def suspend_batch(self) -> Any:
        state, self._ids = self._ids, None
        return state

    def resume_batch(self, state: Any) -> None:
        self._ids = state

    def end_batch(self) -> None:
        if self.reducer is not None:
            self.reducer.observe(self._finals.pop(), self._ids)

    def finalize(self, ctx: JobContext) -> Dict[str, Any]:
        if self._hook is not None:
            self._hook.close()
        if self.reducer is None:
            return dict(skipped="no LM head was loaded")
        return dict(self.reducer.result(), num_sequences=int(ctx.tokens.shape[0]))

    report_section = staticmethod(markdown_section)

    @staticmethod
    def comparison_row(section: Dict[str, Any]) -> Dict[str, Any]:
        return dict(ppl=section.get("ppl"), bits_per_byte=section.get("bits_per_byte"))

    @classmethod
    def memory(cls, cfg: DictConfig, shape: MemoryShape) -> MemoryNeed:
        # The head runs on chunks of the last hidden states: its weights, one chunk's logits and their fp32 copies
        # (the streamed engine reads the head after the last block; counting it beside the blocks stays above that).
        rows = min(cls.chunk_tokens, shape.batch * max(shape.seq_len - 1, 1))
        head = 0.0 if shape.tied_embeddings else shape.vocab_size * shape.hidden * shape.act_bytes
        return MemoryNeed(
            lm_head=head,
            extra=rows * shape.vocab_size * (shape.act_bytes + 4 + 4),
            notes=[f"analysis.perplexity: LM head and {cls.chunk_tokens}-position logits chunks counted"],
        )
