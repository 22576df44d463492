"""The helpers detector plug-ins share."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from outlier_lab.analysis.detectors._shared import require_trained_head
from outlier_lab.errors import UserError


def test_refuses_a_checkpoint_without_a_trained_head():
    config = LlamaConfig(architectures=["LlamaModel"])
    with pytest.raises(UserError, match="analysis.perplexity=true needs a causal language model; m ships"):
        require_trained_head(config, "m", "analysis.perplexity=true")
