"""The de-quantised Gemma 3 270M is the model in the GGUF (issue 39; bench/gguf_check.py writes the
figures): every tensor against the gguf package's de-quantisation, and the whole model's logits against
llama.cpp's reading of the same file (needs llama-cpp-python, a bench extra; skipped without it)."""

from __future__ import annotations

import pytest
import torch

from bench import gguf_check
from workers.convert import ensure_gemma3_converted, gemma3_gguf_path
from workers.models import load_model

pytestmark = pytest.mark.gemma_full


def test_every_tensor_is_the_ggufs() -> None:
    """Invariant: all 236 tensors of the cache equal the GGUF's de-quantised tensors (names, shapes,
    layouts and Gemma's +1 norm offset), bit for bit."""
    count, worst, kinds = gguf_check.check_tensors(gemma3_gguf_path(), ensure_gemma3_converted())
    assert count == 236 and worst == 0.0
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"} <= set(kinds)


def test_logits_agree_with_llama_cpp_within_the_stated_tolerance() -> None:
    """Invariant: on the check's prompts (one past the 512-token sliding window) the next token's
    log-prob differs from llama.cpp's by at most gguf_check.TOLERANCE (llama.cpp rounds activations
    to 8 bits), and the control with one tensor broken is far outside it."""
    pytest.importorskip("llama_cpp")
    torch.set_num_threads(1)
    loaded = load_model("gemma3-270m", "cpu", "float32")
    ids = [loaded.tokenizer.encode(p, add_special_tokens=True) for p in gguf_check.PROMPTS]
    theirs = gguf_check.llama_cpp_logits(gemma3_gguf_path(), ids, threads=1)
    stats = gguf_check.compare_logits(gguf_check.transformers_logits(loaded.model, ids), theirs, ids)
    assert stats.next_token_p99 <= gguf_check.TOLERANCE["next_token_logprob_p99"], stats
    assert stats.next_token_max <= gguf_check.TOLERANCE["next_token_logprob_max"], stats
    assert stats.top1_agreement >= gguf_check.TOLERANCE["top1_agreement"], stats
    with torch.no_grad():
        loaded.model.model.norm.weight.add_(1.0)
    control = gguf_check.compare_logits(gguf_check.transformers_logits(loaded.model, ids), theirs, ids)
    assert control.next_token_max > 10 * gguf_check.TOLERANCE["next_token_logprob_max"], control
