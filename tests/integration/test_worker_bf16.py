"""bf16 weights on CPU: what WORKER_DTYPE=auto picks on CPUs with native bf16 (vLLM's CPU default).

bf16 rounds the logits (~3 significant digits), so the exact equalities of the fp32 tests become
bounds: the sampled tokens' log-probs equal teacher forcing and fp32 to bf16 rounding, batching
changes nothing beyond it, seeds still reproduce. The bounds are set for tiny-random, whose logits
are large (peaked distributions: the worst case for bf16); a wrong attention or cache is off by nats.
SmolLM2's figures are in docs/results/dtype.txt (bench/dtype.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import pytest
import torch

from workers import models
from workers.engine.config import EngineConfig
from workers.engine.core import Engine
from workers.engine.sampling import SamplingOptions
from workers.models import load_model, resolve_dtype

MEDIAN_TOL = 0.05  # nats per token
MAX_TOL = 0.5


def test_dtype_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(cpu, "float32") is torch.float32
    assert resolve_dtype(cpu, "bfloat16") is torch.bfloat16
    assert resolve_dtype(cuda, "auto") is torch.bfloat16
    assert resolve_dtype(cpu, torch.float32) is torch.float32
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype(cpu, "auto") is torch.float32  # emulated bf16 would be slower than fp32
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype(cpu, "float16")


def _engine(dtype: str) -> Engine:
    config = EngineConfig(max_model_len=2048, score_token_budget=8192, decode="fast", force_ignore_eos=False)
    return Engine(load_model("tiny-random", "cpu", dtype), config)


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, Engine]]:
    made = {"bf16": _engine("bfloat16"), "fp32": _engine("float32")}
    yield made
    for engine in made.values():
        engine.close()


@pytest.fixture(scope="module")
def prompt(engines: dict[str, Engine]) -> list[int]:
    return engines["bf16"].tokenize_chat([{"role": "user", "content": "Write a short poem about the sea."}])


def _check(diffs: list[float]) -> None:
    assert statistics.median(diffs) <= MEDIAN_TOL, statistics.median(diffs)
    assert max(diffs) <= MAX_TOL, max(diffs)


def test_weights_and_decode_path_are_bf16(engines: dict[str, Engine]) -> None:
    engine = engines["bf16"]
    assert engine.loaded.dtype is torch.bfloat16
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    assert engine.fast is not None and engine.fast.runner.cpu_low_precision
    assert engines["fp32"].fast is not None and not engines["fp32"].fast.runner.cpu_low_precision


def test_bf16_sampling_is_reproducible_and_is_teacher_forcing(
    engines: dict[str, Engine], prompt: list[int]
) -> None:
    engine = engines["bf16"]
    options = SamplingOptions(n=8, max_tokens=40, seed=11, logprobs=0)
    samples = engine.complete([prompt], options)[0].samples
    assert [s.token_ids for s in engine.complete([prompt], options)[0].samples] == [
        s.token_ids for s in samples
    ]
    other = SamplingOptions(n=8, max_tokens=40, seed=12, logprobs=0)
    assert [s.token_ids for s in engine.complete([prompt], other)[0].samples] != [
        s.token_ids for s in samples
    ]
    assert len({len(s.token_ids) for s in samples}) > 1  # some rows finished early and were dropped
    scores = engine.score([prompt + s.token_ids for s in samples])
    diffs = [
        abs(sampled - teacher)
        for sample, scored in zip(samples, scores, strict=True)
        for sampled, teacher in zip(sample.logprobs, scored.token_logprobs[len(prompt) :], strict=True)
        if teacher is not None
    ]
    _check(diffs)


def test_bf16_scores_batched_one_by_one_and_fp32_agree(engines: dict[str, Engine], prompt: list[int]) -> None:
    bf16, fp32 = engines["bf16"], engines["fp32"]
    samples = fp32.complete([prompt], SamplingOptions(n=6, max_tokens=30, seed=5, ignore_eos=True))[0].samples
    sequences = [prompt + s.token_ids for s in samples]
    batched = bf16.score(sequences)
    exact = fp32.score(sequences)
    batch_diffs, dtype_diffs = [], []
    for sequence, scored, reference in zip(sequences, batched, exact, strict=True):
        alone = bf16.score([sequence])[0]
        for position in range(1, len(sequence)):
            value = scored.token_logprobs[position]
            assert value is not None
            batch_diffs.append(abs(value - (alone.token_logprobs[position] or 0.0)))
            dtype_diffs.append(abs(value - (reference.token_logprobs[position] or 0.0)))
    _check(batch_diffs)
    _check(dtype_diffs)
