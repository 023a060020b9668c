"""Continuous batching in the worker (:mod:`workers.engine.batching`), on an in-process tiny-random engine
in the default dtype (bf16 on a CPU with native bf16: the batch-invariant path).

Invariants: a request's choices (tokens, log-probs, top log-probs, prompt log-probs) are bit-identical
whether it runs alone or with up to 16 other generation / scoring requests arriving at random offsets,
and equal to the serial :meth:`Engine.complete`; with one priority waiting work is never overtaken
(FIFO), so a large request is not starved by a stream of small ones; a later request of better
``priority`` overtakes waiting work and gives the bits it gives alone; a cancelled request leaves and
the loop goes on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.engine.batching import BatchLoop
from workers.engine.config import EngineConfig
from workers.engine.core import Engine
from workers.engine.sampling import SamplingOptions
from workers.engine.scheduler import Scheduler, StepPlan
from workers.engine.types import PromptResult
from workers.models import LoadedModel, load_model

Request = tuple[list[list[int]], SamplingOptions, int | None]


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny-random", "cpu", "auto")


@pytest.fixture(scope="module")
def engine(tiny: LoadedModel) -> Iterator[Engine]:
    made = Engine(tiny, EngineConfig(batching=True))
    if made.batching is None:
        pytest.skip(f"no batch-invariant path here (weights {tiny.model.dtype} on this CPU)")
    try:
        yield made
    finally:
        made.close()


def _pack(results: list[PromptResult]) -> str:
    """Every number of a reply, as exact text (repr of floats: equal text ⇔ equal bits)."""
    out: list[Any] = []
    for result in results:
        scores = result.scores
        out.append(
            (
                (scores.token_logprobs, scores.ranks, scores.top) if scores else None,
                [
                    (s.token_ids, s.logprobs, s.top_logprobs, s.finish_reason, s.stop_reason)
                    for s in result.samples
                ],
            )
        )
    return repr(out)


_TOKENS = st.integers(min_value=0, max_value=49151)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    kind = draw(st.sampled_from(["generate", "score", "score+generate"]))
    seed = draw(st.integers(0, 2**32))
    if kind == "generate":
        prompts = [draw(st.lists(_TOKENS, min_size=1, max_size=140))]
        options = SamplingOptions(
            n=draw(st.integers(1, 6)),
            max_tokens=draw(st.integers(1, 16)),
            temperature=draw(st.sampled_from([0.0, 0.7, 1.0])),
            top_p=draw(st.sampled_from([1.0, 0.9])),
            seed=seed,
            logprobs=draw(st.sampled_from([None, 0, 2])),
        )
        return prompts, options, None
    # Candidates under one context (MOSAIC's scoring shape: prefix groups) and a stray prompt.
    context = draw(st.lists(_TOKENS, min_size=16, max_size=120))
    replies = draw(st.lists(st.lists(_TOKENS, min_size=1, max_size=30), min_size=1, max_size=5))
    prompts = [context + reply for reply in replies]
    if draw(st.booleans()):
        prompts.append(draw(st.lists(_TOKENS, min_size=2, max_size=40)))
    max_tokens = 1 if kind == "score" else draw(st.integers(2, 8))
    return prompts, SamplingOptions(n=1, max_tokens=max_tokens, seed=seed), draw(st.sampled_from([0, 1]))


async def _run(engine: Engine, batch: list[Request], offsets: list[float]) -> list[list[PromptResult]]:
    async def one(request: Request, offset: float) -> list[PromptResult]:
        await asyncio.sleep(offset)
        return await engine.acomplete(*request)

    return list(await asyncio.gather(*(one(r, o) for r, o in zip(batch, offsets, strict=True))))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_request_is_bit_identical_alone_and_among_others(engine: Engine, data: st.DataObject) -> None:
    target = data.draw(requests(), label="target")
    others = data.draw(st.lists(requests(), min_size=1, max_size=16), label="others")
    offsets = data.draw(st.lists(st.floats(0, 0.2), min_size=len(others) + 1, max_size=len(others) + 1))
    alone = asyncio.run(_run(engine, [target], [0.0]))[0]
    together = asyncio.run(_run(engine, [target, *others], offsets))
    assert _pack(together[0]) == _pack(alone)
    assert _pack(engine.complete(*target)) == _pack(alone)  # the serial path agrees
    for request, result in zip(others, together[1:], strict=True):
        assert len(result) == len(request[0])


def test_waiting_work_is_never_overtaken_by_a_stream_of_small_requests(tiny: LoadedModel) -> None:
    engine = Engine(tiny, EngineConfig(batching=True))
    if engine.invariant is None:
        pytest.skip("no batch-invariant path here")
    # A small step budget: the big requests never fit beside the running small ones.
    engine.batching = BatchLoop(
        engine.decoder, engine.scorer, engine.lock, engine.stats, Scheduler(token_budget=64, max_rows=8)
    )
    started: list[str] = []  # on_start order (the engine's thread)
    lock = threading.Lock()
    stop = threading.Event()

    def mark(name: str) -> Any:
        def on_start() -> None:
            with lock:
                started.append(name)

        return on_start

    small = SamplingOptions(n=2, max_tokens=6, seed=1, ignore_eos=True)
    big_generation = (
        [list(range(100, 160))],
        SamplingOptions(n=4, max_tokens=12, seed=2, ignore_eos=True),
        None,
    )
    big_scoring = ([list(range(200, 260)), list(range(300, 356))], SamplingOptions(max_tokens=1, seed=3), 0)

    async def stream(index: int) -> int:
        served = 0
        while not stop.is_set():
            await engine.acomplete([[5, 6, 7, index]], small, None, mark(f"small-{index}-{served}"))
            served += 1
        return served

    async def main() -> tuple[float, list[int], int]:
        streams = [asyncio.create_task(stream(i)) for i in range(4)]
        await asyncio.sleep(0.3)
        with lock:
            before = len(started)
        began = time.monotonic()
        big = asyncio.gather(
            engine.acomplete(*big_generation, mark("big-generation")),
            engine.acomplete(*big_scoring, mark("big-scoring")),
        )
        try:
            await asyncio.wait_for(big, 60)  # starved: fails here instead of hanging
        finally:
            stop.set()
        took = time.monotonic() - began
        return took, list(await asyncio.gather(*streams)), before

    try:
        took, served, before = asyncio.run(main())
    finally:
        engine.close()
    assert took < 60
    assert all(count > 0 for count in served)
    # At most the 4 small requests already waiting when the big ones arrived start before them.
    first_big = min(started.index("big-generation"), started.index("big-scoring"))
    assert first_big - before <= 4, started[before : first_big + 2]


def _finish_order(tiny: LoadedModel, aging_steps: int) -> tuple[list[str], list[PromptResult]]:
    """A big low-priority scoring request, then (once it runs) a small urgent one: the order they
    finish in and the small one's results."""
    engine = Engine(tiny, EngineConfig(batching=True))
    if engine.invariant is None:
        pytest.skip("no batch-invariant path here")
    # A small step budget: the big request's 24 prompts of 120 tokens take 12+ steps.
    engine.batching = BatchLoop(
        engine.decoder, engine.scorer, engine.lock, engine.stats, Scheduler(256, 8, aging_steps=aging_steps)
    )
    big = [list(range(1000 + 7 * i, 1120 + 7 * i)) for i in range(24)]
    finished: list[str] = []
    began = threading.Event()
    try:
        slow = engine.batching.submit(big, SamplingOptions(max_tokens=1, seed=3), 0, 3, began.set, priority=5)
        slow.add_done_callback(lambda _: finished.append("big"))
        assert began.wait(30)
        quick = engine.batching.submit(*URGENT, 7, None, priority=0)
        quick.add_done_callback(lambda _: finished.append("urgent"))
        results = quick.result(60)
        slow.result(60)
    finally:
        engine.close()
    return finished, results


URGENT: Request = ([list(range(50, 90)), list(range(60, 75))], SamplingOptions(max_tokens=4, seed=7), 0)


def test_a_later_urgent_request_finishes_first_with_the_bits_it_has_alone(
    tiny: LoadedModel, engine: Engine
) -> None:
    """Invariant: priority orders waiting work (a request of priority 0 sent after a big one of
    priority 5 has started finishes first) and never changes a result (bits as alone); with
    aging_steps=0 the order is arrival order (the big one first: the test can fail)."""
    order, results = _finish_order(tiny, aging_steps=512)
    assert order == ["urgent", "big"]
    alone = asyncio.run(_run(engine, [URGENT], [0.0]))[0]
    assert _pack(results) == _pack(alone)
    fifo_order, fifo_results = _finish_order(tiny, aging_steps=0)
    assert fifo_order == ["big", "urgent"]
    assert _pack(fifo_results) == _pack(alone)


def test_a_cancelled_request_leaves_and_the_loop_goes_on(engine: Engine) -> None:
    assert engine.batching is not None
    long = ([[1, 2, 3]], SamplingOptions(n=8, max_tokens=2000 - 4, seed=1, ignore_eos=True), None)
    short = ([[4, 5, 6]], SamplingOptions(n=1, max_tokens=4, seed=2), None)

    async def main() -> list[PromptResult]:
        task = asyncio.create_task(engine.acomplete(*long))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.wait_for(engine.acomplete(*short), 30)

    assert len(asyncio.run(main())[0].samples) == 1
    deadline = time.monotonic() + 10
    while not engine.batching.scheduler.idle and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.batching.scheduler.idle


HEAVY: Request = ([list(range(400, 430))], SamplingOptions(n=12, max_tokens=40, seed=11, ignore_eos=True), 0)
LIGHT: Request = ([list(range(20, 36))], SamplingOptions(n=2, max_tokens=24, seed=13, ignore_eos=True), 0)


def test_a_paused_generation_has_the_bits_it_has_alone(
    tiny: LoadedModel, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: pausing a running generation of much worse priority (it sits out decode steps while
    a light request of better priority runs, its K/V kept in the pool) changes no token or log-prob of
    it or of the light one (bits as alone), and the paused one still decodes every pause_steps steps."""
    paused = Engine(tiny, EngineConfig(batching=True))
    if paused.invariant is None:
        pytest.skip("no batch-invariant path here")
    loop = BatchLoop(
        paused.decoder,
        paused.scorer,
        paused.lock,
        paused.stats,
        Scheduler(256, 64, pause_steps=4, pause_gap=4),
    )
    paused.batching = loop
    plans: list[StepPlan] = []
    plan = loop.scheduler.plan

    def recording() -> StepPlan:
        plans.append(plan())
        return plans[-1]

    monkeypatch.setattr(loop.scheduler, "plan", recording)
    began = threading.Event()

    async def main() -> tuple[list[PromptResult], list[PromptResult]]:
        heavy = asyncio.create_task(paused.acomplete(*HEAVY, began.set, priority=17))
        while not began.is_set():
            await asyncio.sleep(0.001)
        light = await asyncio.wait_for(paused.acomplete(*LIGHT, priority=12), 60)
        return await asyncio.wait_for(heavy, 60), light

    try:
        heavy_results, light = asyncio.run(main())
    finally:
        paused.close()
    skipped = [p for p in plans if p.paused]
    assert len(skipped) >= 10, "the heavy generation was never paused"
    assert all(not p.paused for p in plans[len(plans) - 3 :])  # alone again: every step
    assert _pack(heavy_results) == _pack(asyncio.run(_run(engine, [HEAVY], [0.0]))[0])
    assert _pack(heavy_results) == _pack(engine.complete(*HEAVY))
    assert _pack(light) == _pack(engine.complete(*LIGHT))
