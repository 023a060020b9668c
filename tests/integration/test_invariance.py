"""Exactness and batch invariance in the default dtype (bf16 on CPUs with native bf16): the engine's
batch-invariant forward (workers/engine/invariant.py), in process, tiny-random.

* decoding reports, for every sampled token, the bits teacher-forced scoring gives that token under
  the same prompt (so Σ sampled log-probs = the score of the reply, exactly);
* a sequence's prompt log-probs are the same bits whatever else is in the request, in any order,
  chunking (token budget) and prefix sharing;
* a seeded generation's sample k is the same bits for any n (1…64) and whatever else the worker
  ran before, or in the same request;
* the row-invariance facts the forward is built on (tiled bf16 products, fp32 products with ≥ 2 rows).

Hypothesis draws prompt lengths (across the 64-key attention blocks), reply lengths, batch
compositions and row counts. Full count:
``INVARIANCE_EXAMPLES=200 pytest tests/integration/test_invariance.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.engine import invariant, tiling
from workers.engine.config import EngineConfig
from workers.engine.core import Engine
from workers.engine.invariant_batch import InvariantBatch
from workers.engine.sampling import SamplingOptions
from workers.models import load_model, resolve_dtype

EXAMPLES = int(os.environ.get("INVARIANCE_EXAMPLES", "5"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
VOCAB_LOW, VOCAB_HIGH = 3, 40000


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    dtype = "auto" if resolve_dtype(torch.device("cpu"), "auto") != torch.float32 else "bfloat16"
    loaded = load_model("tiny-random", "cpu", dtype)
    eng = Engine(loaded, EngineConfig(score_token_budget=4096))
    assert eng.invariant is not None, "the default CPU dtype must run the batch-invariant forward"
    yield eng
    eng.close()


def tokens(seed: int, length: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(VOCAB_LOW, VOCAB_HIGH, (length,), generator=gen).tolist()


def scored(engine: Engine, prompts: list[list[int]], **kw: int | bool) -> list[list[float | None]]:
    saved = engine.score_token_budget, engine.prefix_sharing
    engine.score_token_budget = int(kw.get("budget", saved[0]))
    engine.prefix_sharing = bool(kw.get("sharing", saved[1]))
    try:
        return [s.token_logprobs for s in engine.score(prompts)]
    finally:
        engine.score_token_budget, engine.prefix_sharing = saved


@SETTINGS
@given(
    prompt_len=st.integers(1, 200),
    n=st.integers(1, 8),
    max_tokens=st.integers(1, 70),
    seed=st.integers(0, 2**31),
)
def test_sampled_logprobs_are_the_teacher_forced_scores(
    engine: Engine, prompt_len: int, n: int, max_tokens: int, seed: int
) -> None:
    prompt = tokens(seed, prompt_len)
    options = SamplingOptions(n=n, max_tokens=max_tokens, seed=seed, ignore_eos=True, logprobs=0)
    samples = engine.complete([prompt], options)[0].samples
    scores = scored(engine, [prompt + s.token_ids for s in samples])
    for sample, score in zip(samples, scores, strict=True):
        assert sample.logprobs == score[prompt_len:]  # bit for bit, every token
        assert sum(sample.logprobs) == sum(score[prompt_len:])  # type: ignore[arg-type]


@SETTINGS
@given(
    prefix_len=st.integers(1, 150),
    reply_lens=st.lists(st.integers(1, 90), min_size=1, max_size=9),
    others=st.lists(st.integers(1, 120), max_size=3),
    order_seed=st.integers(0, 2**31),
    budget=st.sampled_from([64, 300, 4096]),
    sharing=st.booleans(),
)
def test_prompt_logprobs_do_not_depend_on_the_batch(
    engine: Engine,
    prefix_len: int,
    reply_lens: list[int],
    others: list[int],
    order_seed: int,
    budget: int,
    sharing: bool,
) -> None:
    prefix = tokens(order_seed, prefix_len)
    batch = [prefix + tokens(order_seed + 1 + k, r) for k, r in enumerate(reply_lens)]
    batch += [tokens(order_seed + 100 + k, length) for k, length in enumerate(others)]
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(order_seed)).tolist()
    shuffled = [batch[i] for i in order]
    together = scored(engine, shuffled, budget=budget, sharing=sharing)
    for position, i in enumerate(order):
        alone = scored(engine, [batch[i]], budget=4096, sharing=True)[0]
        assert together[position] == alone


@SETTINGS
@given(
    prompt_len=st.integers(1, 140),
    rows=st.lists(st.sampled_from([1, 2, 3, 8, 17, 33, 64]), min_size=2, max_size=3),
    max_tokens=st.integers(1, 10),
    seed=st.integers(0, 2**31),
    other_len=st.integers(1, 100),
)
def test_seeded_samples_do_not_depend_on_n_or_other_work(
    engine: Engine, prompt_len: int, rows: list[int], max_tokens: int, seed: int, other_len: int
) -> None:
    prompt = tokens(seed, prompt_len)
    other = tokens(seed + 7, other_len)
    runs = []
    for k, n in enumerate(rows):
        if k % 2:  # other work in between: a different generation and a scoring request
            engine.complete([other], SamplingOptions(n=3, max_tokens=5, seed=seed + 1))
            engine.score([other, prompt])
        options = SamplingOptions(n=n, max_tokens=max_tokens, seed=seed, logprobs=0)
        runs.append(engine.complete([prompt], options)[0].samples)
    shared = min(rows)
    first = [(s.token_ids, s.logprobs) for s in runs[0][:shared]]
    for run in runs[1:]:
        assert [(s.token_ids, s.logprobs) for s in run[:shared]] == first
    # The same prompt next to another one in one request (with prompt log-probs): the same samples.
    options = SamplingOptions(n=shared, max_tokens=max_tokens, seed=seed, logprobs=0)
    mixed = engine.complete([other, prompt], options, prompt_logprobs=0)[1].samples
    assert [(s.token_ids, s.logprobs) for s in mixed] == first


@SETTINGS
@given(
    prompt_len=st.integers(1, 140),
    others=st.lists(st.tuples(st.integers(1, 200), st.integers(1, 6)), min_size=1, max_size=4),
    drop=st.integers(0, 3),
    seed=st.integers(0, 2**31),
)
def test_decode_rows_do_not_depend_on_their_slot_or_the_other_rows(
    engine: Engine, prompt_len: int, others: list[tuple[int, int]], drop: int, seed: int
) -> None:
    """A request's rows decoded alone (a pool of their own) and in a pool shared with other requests'
    rows (other capacities, rows leaving so rows move slots, a step where the decoding slots are not
    the first ones): the same hidden bits at every step.
    """
    inv = engine.invariant
    assert inv is not None
    prompt = tokens(seed, prompt_len)
    steps = 6
    feed = [torch.tensor(tokens(seed + 1 + t, 3)) for t in range(steps)]

    def run(shared: bool) -> list[torch.Tensor]:
        pool = inv.new_pool()
        mine = InvariantBatch(inv, 3, steps + 1, None, pool if shared else None)
        crowd = [InvariantBatch(inv, n, steps + 1, None, pool) for _, n in others] if shared else []
        lengths = [length for length, _ in others]
        early, late = range(len(crowd) // 2), range(len(crowd) // 2, len(crowd))
        out = []
        with torch.inference_mode():
            for i in early:  # prefilled before mine: mine sits in later slots
                crowd[i].prefill(tokens(seed + lengths[i], lengths[i]))
            mine.prefill(prompt)
            for step in range(steps):
                if step == 1:  # these join (after mine), and decode while the first ones wait
                    for i in late:
                        crowd[i].prefill(tokens(seed + lengths[i], lengths[i]))
                if step == 2 and crowd:  # rows leave: later slots move into the holes
                    crowd[0].keep([0])
                    if drop:
                        crowd[-1].release()
                decoding = [mine] + [
                    crowd[i]
                    for i in (late if step == 1 else range(len(crowd)))
                    if crowd[i].rows is not None and crowd[i].rows.count  # type: ignore[union-attr]
                ]
                groups = [mine.step_group(feed[step])]
                groups += [b.step_group(torch.full((b.rows.count,), 5 + step)) for b in decoding[1:]]  # type: ignore[union-attr]
                hidden = inv.decode_groups(groups)
                for batch, rows in zip(decoding, hidden, strict=True):
                    batch.stepped(rows)
                out.append(hidden[0])
        return out

    alone, together = run(False), run(True)
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)


SHAPES = [(64, 64), (64, 32), (64, 128), (128, 64), (576, 192), (576, 576), (576, 1536), (1536, 576)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{k}x{n}" for k, n in SHAPES])
def test_tiled_bf16_products_do_not_depend_on_the_other_rows(shape: tuple[int, int]) -> None:
    """Many rows (rare rounding flips show), every tile length, each row alone: the same bits, with
    the tile plan this machine's calibration picks (workers/engine/tiling.py), which the engine uses.
    The shapes: tiny-random's (q 64x64, k/v 64x32, gate/up, down) and SmolLM2's."""
    k, n = shape
    gen = torch.Generator().manual_seed(k * n)
    weight = (torch.randn((n, k), generator=gen) * 0.3).bfloat16()
    x = torch.randn((600, k), generator=gen).bfloat16()
    plan = tiling.calibrate(weight, None)
    assert tiling.plan_for(weight) == plan
    if plan != tiling.DEFAULT_PLAN:  # the calibrated plan holds where the probe did not look
        alone = torch.cat([tiling._tiled(x[i : i + 1], weight, None, plan) for i in range(600)])
        for rows in range(plan.min_rows, plan.max_rows + 1, 13):
            together = torch.cat([F.linear(x[s : s + rows], weight) for s in range(0, 600 - rows + 1, rows)])
            assert torch.equal(together, alone[: together.shape[0]]), rows
    alone = torch.cat([invariant.tiled_linear(x[i : i + 1], weight, None) for i in range(x.shape[0])])
    assert torch.equal(invariant.tiled_linear(x, weight, None), alone)
    for rows in (2, 3, 7, 8, 31, 33, 100):
        together = torch.cat(
            [invariant.tiled_linear(x[s : s + rows], weight, None) for s in range(0, x.shape[0], rows)]
        )
        assert torch.equal(together, alone), rows


@settings(max_examples=max(EXAMPLES, 20), deadline=None)
@given(rows=st.integers(1, 200), columns=st.integers(1, 4).map(lambda b: b * invariant.BLOCK))
def test_fp32_products_do_not_depend_on_the_row_count(rows: int, columns: int) -> None:
    gen = torch.Generator().manual_seed(rows * 7 + columns)
    a = torch.randn((3, rows, 16), generator=gen)
    b = torch.randn((3, 16, columns), generator=gen)
    full = invariant._bmm(a, b)
    for i in {0, rows // 2, rows - 1}:
        assert torch.equal(invariant._bmm(a[:, i : i + 1].contiguous(), b), full[:, i : i + 1])
