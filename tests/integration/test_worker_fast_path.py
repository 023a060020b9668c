"""The fast decode path (workers/engine/fast_decode.py, llama.py): same numbers, same samples, same contract.

On CPU the default ``fast`` mode must reproduce the transformers loop (``legacy``) exactly: same
tokens, same log-probs, bit for bit, for every sampling option. The CUDA-shaped variant (batch rows
rounded up to a bucket, attention window rounded up and masked, next step queued before the tokens
are read back) runs here on CPU too: it must agree with the transformers forward to float rounding,
be reproducible from its seed, and report log q(y) equal to the teacher-forced score. With a GPU, the
CUDA tests check that captured graphs replay exactly what the eager step computes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.fixtures_worker import start_worker_process
from workers.engine import llama
from workers.engine.config import EngineConfig
from workers.engine.core import Engine
from workers.engine.fast_decode import FastDecoder, align, bucket_rows
from workers.engine.llama import LlamaRunner
from workers.engine.sampling import SamplingOptions
from workers.engine.types import Sample
from workers.models import LoadedModel, load_model

TOL = 1e-4
CASES: list[dict[str, Any]] = [
    {"n": 8, "max_tokens": 40, "seed": 11, "logprobs": 0},
    {"n": 4, "max_tokens": 12, "temperature": 0.7, "top_p": 0.9, "seed": 21, "logprobs": 2},
    {"n": 3, "max_tokens": 6, "temperature": 0.0},
    {"n": 6, "max_tokens": 30, "ignore_eos": True, "seed": 2},
    {"n": 5, "max_tokens": 30, "min_tokens": 10, "seed": 3},
    {"n": 1, "max_tokens": 12, "seed": 6, "stop": ("the",)},
    {"n": 16, "max_tokens": 48, "seed": 7},
]


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    torch.set_num_threads(1)
    return load_model("tiny-random", "cpu", "float32")


@pytest.fixture(scope="module")
def prompt(tiny: LoadedModel) -> list[int]:
    engine = _engine(tiny, "legacy")
    try:
        return engine.tokenize_chat([{"role": "user", "content": "Write a short poem about the sea."}])
    finally:
        engine.close()


def _engine(loaded: LoadedModel, decode: str, **kwargs: Any) -> Engine:
    config = EngineConfig(
        max_model_len=2048,
        score_token_budget=8192,
        decode=decode,  # type: ignore[arg-type]
        force_ignore_eos=kwargs.pop("force_ignore_eos", False),
        **kwargs,
    )
    return Engine(loaded, config)


@pytest.fixture(scope="module")
def engines(tiny: LoadedModel) -> Iterator[dict[str, Engine]]:
    """legacy, fast (CPU default), and the CUDA-shaped variants run eagerly on CPU."""
    made = {"legacy": _engine(tiny, "legacy"), "fast": _engine(tiny, "fast")}
    for name, overlap, bucketed in (("overlap", True, False), ("cuda_shaped", True, True)):
        engine = _engine(tiny, "fast")
        engine.fast = FastDecoder(
            tiny.model, overlap=overlap, bucketed=bucketed, on_forward=engine._count_forward
        )
        made[name] = engine
    # The CPU bf16 attention (fp32 arithmetic, one shared copy of the prompt's K/V) run on fp32
    # weights: its only difference from the transformers loop is then the attention arithmetic.
    cascade = _engine(tiny, "fast")
    assert cascade.fast is not None
    cascade.fast.runner.cpu_low_precision = True
    made["cascade"] = cascade
    yield made
    for engine in made.values():
        engine.close()


def _run(engine: Engine, prompt: list[int], **case: Any) -> list[Sample]:
    return engine.complete([prompt], SamplingOptions(**case))[0].samples


# ------------------------------------------------------------------------------------- the forward
def test_runner_matches_transformers_forward(tiny: LoadedModel, prompt: list[int]) -> None:
    """Prefill and every decode step (exact and bucketed/masked windows) = the transformers logits."""
    model = tiny.model
    runner = LlamaRunner(model)
    tokens = prompt + [
        int(t) for t in torch.randint(3, 40000, (9,), generator=torch.Generator().manual_seed(1))
    ]
    with torch.inference_mode():
        reference = model(torch.tensor([tokens])).logits[0].float()
        for bucketed in (False, True):
            decoder = FastDecoder(model, overlap=bucketed, bucketed=bucketed)
            batch = decoder.begin(len(prompt), 3, 10)
            assert batch.rows == (bucket_rows(3) if bucketed else 3)
            assert batch.capacity == (align(len(prompt) + 10) if bucketed else len(prompt) + 10)
            first = batch.prefill(prompt)
            assert torch.allclose(first[0], reference[len(prompt) - 1], atol=1e-5)
            for step, token in enumerate(tokens[len(prompt) :]):
                batch.launch(torch.full((3,), token, dtype=torch.long))
                got = batch.logits(count=3)
                expected = reference[len(prompt) + step]
                for row in range(3):
                    assert torch.allclose(got[row], expected, atol=1e-4), (bucketed, step, row)
    assert runner.num_heads != runner.num_kv_heads  # tiny-random exercises grouped-query attention


def test_fused_weights_are_views_and_change_nothing(tiny: LoadedModel, prompt: list[int]) -> None:
    """The CUDA layout (q/k/v and gate/up fused, the model's linears viewing them) on CPU."""
    import copy

    model = copy.deepcopy(tiny.model)
    with torch.inference_mode():
        before = model(torch.tensor([prompt])).logits[0, -1].float()
    decoder = FastDecoder(model, overlap=True, bucketed=True, fuse=True)
    attn = model.model.layers[0].self_attn
    assert decoder.runner.fused and len(decoder.runner.layers[0].qkv) == 1
    assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.q_proj.weight.untyped_storage().data_ptr()
    with torch.inference_mode():
        assert torch.equal(model(torch.tensor([prompt])).logits[0, -1].float(), before)
        batch = decoder.begin(len(prompt), 2, 4)
        assert torch.allclose(batch.prefill(prompt)[0], before, atol=1e-5)
        batch.launch(torch.tensor([5, 6]))
        expected = model(torch.tensor([[*prompt, 6]])).logits[0, -1].float()
        assert torch.allclose(batch.logits(count=2)[1], expected, atol=1e-4)


def test_unsupported_architecture_uses_legacy_loop(tiny: LoadedModel, prompt: list[int]) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=tiny.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    other = dataclasses.replace(tiny, name="qwen2-tiny", model=Qwen2ForCausalLM(config).eval())
    assert llama.unsupported_reason(other.model) is not None
    engine = _engine(other, "fast")
    try:
        assert engine.fast is None and engine.decode_mode == "legacy" and engine.fast_path_reason
        samples = _run(engine, prompt, n=2, max_tokens=4, seed=1, ignore_eos=True)
        assert [len(s.token_ids) for s in samples] == [4, 4]
    finally:
        engine.close()
    assert _engine(tiny, "legacy").fast is None
    with pytest.raises(ValueError):
        _engine(tiny, "turbo")


# --------------------------------------------------------------------------------- samples / seeds
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_fast_decode_is_the_legacy_loop_bit_for_bit(
    engines: dict[str, Engine], prompt: list[int], case: dict[str, Any]
) -> None:
    legacy = _run(engines["legacy"], prompt, **case)
    for name in ("fast", "overlap"):
        got = _run(engines[name], prompt, **case)
        for a, b in zip(legacy, got, strict=True):
            assert a.token_ids == b.token_ids, name
            assert (a.finish_reason, a.stop_reason, a.text) == (b.finish_reason, b.stop_reason, b.text), name
            if name == "fast":  # same shapes as the legacy loop: identical arithmetic
                assert a.logprobs == b.logprobs
                assert a.top_logprobs == b.top_logprobs
            else:  # finished rows stay in the batch: matrix shapes differ, rounding may
                assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)


def test_cuda_shaped_decode_reproducible_and_consistent(
    engines: dict[str, Engine], prompt: list[int]
) -> None:
    """Bucketed rows, masked windows and the queued next step: log q(y) = teacher-forced score."""
    engine = engines["cuda_shaped"]
    samples = _run(engine, prompt, n=8, max_tokens=40, seed=11, logprobs=0)
    assert any(s.finish_reason == "stop" for s in samples)
    assert [s.token_ids for s in _run(engine, prompt, n=8, max_tokens=40, seed=11)] == [
        s.token_ids for s in samples
    ]
    assert [s.token_ids for s in _run(engine, prompt, n=8, max_tokens=40, seed=12)] != [
        s.token_ids for s in samples
    ]
    scores = engine.score([prompt + s.token_ids for s in samples])
    for sample, scored in zip(samples, scores, strict=True):
        teacher = sum(v for v in scored.token_logprobs[len(prompt) :] if v is not None)
        assert sum(sample.logprobs) == pytest.approx(teacher, abs=TOL)
    greedy = _run(engine, prompt, n=3, max_tokens=8, temperature=0.0, ignore_eos=True)
    assert [s.token_ids for s in greedy] == [
        s.token_ids
        for s in _run(engines["legacy"], prompt, n=3, max_tokens=8, temperature=0.0, ignore_eos=True)
    ]
    stop_at = greedy[0].token_ids[3]
    stopped = _run(
        engine, prompt, n=3, max_tokens=8, temperature=0.0, ignore_eos=True, stop_token_ids=(stop_at,)
    )
    assert stopped[0].token_ids == greedy[0].token_ids[: greedy[0].token_ids.index(stop_at) + 1]
    assert stopped[0].finish_reason == "stop" and stopped[0].stop_reason == stop_at
    long = _run(engine, prompt, n=5, max_tokens=70, seed=4, ignore_eos=True)  # crosses window buckets
    assert all(len(s.token_ids) == 70 and s.finish_reason == "length" for s in long)
    assert all(math.isfinite(v) and v <= 0 for s in long for v in s.logprobs)


# Unprocessed distributions only (temperature 1, top-p 1, no min_tokens ban): teacher forcing's own.
@pytest.mark.parametrize(
    "case", [CASES[0], CASES[3], CASES[5], CASES[6]], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
def test_cpu_low_precision_attention_is_teacher_forcing(
    engines: dict[str, Engine], prompt: list[int], case: dict[str, Any]
) -> None:
    """The bf16-on-CPU attention (fp32 arithmetic; the prompt's K/V shared by all rows, finished rows
    dropped) gives every sampled token the log-prob that teacher forcing gives it, position by
    position. (Token-for-token equality with the transformers loop is not required: a 1e-7 change
    of the probabilities may move an inverse-CDF draw in the long tail to the next token id.)"""
    engine = engines["cascade"]
    samples = _run(engine, prompt, **case)
    assert [s.token_ids for s in _run(engine, prompt, **case)] == [s.token_ids for s in samples]
    scores = engine.score([prompt + s.token_ids for s in samples])
    for sample, scored in zip(samples, scores, strict=True):
        teacher = scored.token_logprobs[len(prompt) :]
        assert sample.logprobs == pytest.approx(teacher, abs=TOL)
    if case.get("ignore_eos") is None and case["n"] > 1:
        assert len({len(s.token_ids) for s in samples}) > 1  # rows finished early and were dropped


def test_force_ignore_eos(tiny: LoadedModel, prompt: list[int]) -> None:
    engine = _engine(tiny, "fast", force_ignore_eos=True)
    try:
        samples = _run(engine, prompt, n=8, max_tokens=40, seed=11)
        assert all(len(s.token_ids) == 40 and s.finish_reason == "length" for s in samples)
        # stop_token_ids still end a reply (only EOS is ignored, as vLLM's ignore_eos)
        free = _run(engine, prompt, n=1, max_tokens=40, seed=11)[0].token_ids
        stopped = _run(engine, prompt, n=1, max_tokens=40, seed=11, stop_token_ids=(free[5],))
        assert stopped[0].finish_reason == "stop"
    finally:
        engine.close()


def test_worker_process_force_ignore_eos(prompt: list[int]) -> None:
    import httpx

    worker = start_worker_process("tiny-random", env={"WORKER_FORCE_IGNORE_EOS": "1"})
    try:
        body = {
            "prompt": prompt,
            "n": 8,
            "max_tokens": 40,
            "seed": 11,
            "logprobs": 0,
            "return_token_ids": True,
        }
        choices = httpx.post(f"{worker.url}/v1/completions", json=body, timeout=120).json()["choices"]
        assert [len(c["token_ids"]) for c in choices] == [40] * 8
        assert {c["finish_reason"] for c in choices} == {"length"}
    finally:
        worker.stop()


def test_kv_pool_and_buckets(tiny: LoadedModel) -> None:
    assert [bucket_rows(n) for n in (1, 3, 5, 20, 64, 65, 256)] == [1, 4, 8, 24, 64, 80, 256]
    assert [align(p) for p in (1, 64, 65, 356)] == [64, 64, 128, 384]
    decoder = FastDecoder(tiny.model, overlap=True, bucketed=True)
    batch = decoder.begin(100, 20, 256)
    assert (batch.rows, batch.capacity) == (24, 384)
    with torch.inference_mode(), pytest.raises(RuntimeError):
        batch.keep([0, 1])  # rows are never dropped in the CUDA-shaped loop


# ------------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_graphs_replay_the_eager_step() -> None:
    loaded = load_model("tiny-random", "cuda")
    graphs = _engine(loaded, "fast")
    eager = _engine(loaded, "fast")
    assert graphs.fast is not None and graphs.fast.graphs
    eager.fast = FastDecoder(
        loaded.model, graphs=False, overlap=True, bucketed=True, on_forward=eager._count_forward
    )
    p = graphs.tokenize_chat([{"role": "user", "content": "Write a short poem about the sea."}])
    try:
        for case in CASES[:5]:
            a = _run(graphs, p, **case)
            b = _run(eager, p, **case)
            assert [s.token_ids for s in a] == [s.token_ids for s in b], case
            assert [s.logprobs for s in a] == [s.logprobs for s in b], case
        assert graphs.fast.captures > 0 and graphs.fast.graph_error is None
        samples = _run(graphs, p, n=8, max_tokens=40, seed=11, logprobs=0)
        assert [s.token_ids for s in _run(graphs, p, n=8, max_tokens=40, seed=11)] == [
            s.token_ids for s in samples
        ]
        scores = graphs.score([p + s.token_ids for s in samples])
        for sample, scored in zip(samples, scores, strict=True):  # bf16: scoring batches differently
            teacher = sum(v for v in scored.token_logprobs[len(p) :] if v is not None)
            assert sum(sample.logprobs) == pytest.approx(
                teacher, abs=0.05 * max(1, len(sample.logprobs) ** 0.5)
            )
    finally:
        graphs.close()
        eager.close()
