"""Continuous batching of the CPU batch-invariant path: :class:`BatchLoop`, one loop on its own thread
that serves every ``/v1/completions`` request of the engine, step by step; it is given the parts it
runs (decoder, scorer, the model lock, the counters), never the engine. Imports torch,
:mod:`workers.engine.scheduler`, :mod:`workers.engine.generate`, :mod:`workers.engine.score` and the
modules below them. See docs/DESIGN.md (the worker engine: continuous batching).

A request is cut into work for :class:`workers.engine.scheduler.Scheduler`: its scoring (when it asks
``prompt_logprobs``) as units (:class:`workers.engine.score_invariant.InvariantScoreJob`: a plain
prompt, or a prefix group), and one generation per prompt (``n`` rows). Every step:

1. the scheduler's plan (its fairness rule: running generations decode, but one of much worse
   priority than other work sits out steps, its K/V kept, decoding once every ``pause_steps``
   at least; waiting work joins in the order (request ``priority``, arrival) — aged work first,
   by arrival — within the step's token budget and row limit; nothing overtakes the first unit
   that does not fit);
2. one :meth:`InvariantRunner.forward_spans` over the prompts of the generations that join and the
   plain prompts / prefixes of the scoring units planned, then one over those units' suffixes;
3. one :meth:`InvariantRunner.decode_groups` over every running generation not paused (their rows'
   K/V in the loop's :class:`workers.engine.kv_pool.KVPool`: one attention per pool bucket);
4. per generation, :meth:`workers.engine.sampling.DecodeState.step` (the serial loops' step) with its
   own per-sample generators; finished rows leave, finished requests are answered.

Invariant (``tests/integration/test_batching.py``): a request's choices (tokens, log-probs, prompt log-probs)
are bit-identical whether it runs alone or with any other requests: every product is row-invariant
(:func:`workers.engine.invariant.tiled_linear`), attention gives each row the arithmetic it gets
alone (per-entry batched products, masked keys adding exact zeros), and sampling runs per
request on its own rows.

A request whose client goes away is cancelled (its work leaves at the next step boundary). The loop
holds the engine's model lock for each step, so the serial paths (fp32, legacy, CUDA) interleave safely.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from workers.engine.generate import Decoder
from workers.engine.invariant import InvariantRunner, Span
from workers.engine.invariant_batch import InvariantBatch
from workers.engine.kv_pool import KVPool
from workers.engine.sampling import SamplingOptions, sample_generators
from workers.engine.scheduler import Scheduler, StepPlan
from workers.engine.score import Scorer
from workers.engine.score_invariant import InvariantScoreJob
from workers.engine.types import EngineStats, PromptResult

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: requests go in sets
class _Request:
    prompts: list[list[int]]
    options: SamplingOptions
    prompt_logprobs: int | None
    seed: int
    results: list[PromptResult]
    future: Future[list[PromptResult]] = field(default_factory=Future)
    on_start: Callable[[], None] | None = None
    work: set[int] = field(default_factory=set)  # scheduler ids not finished yet
    score: InvariantScoreJob | None = None
    started: bool = False
    priority: int = 0  # vLLM's: lower is served earlier (the scheduler's order of waiting work)


class _Generation:
    """One prompt's ``n`` rows: its decode batch and its :class:`DecodeState`."""

    def __init__(
        self, decoder: Decoder, inv: InvariantRunner, request: _Request, index: int, pool: KVPool
    ) -> None:
        opts = request.options
        self.request, self.index = request, index
        self.prompt = request.prompts[index]
        self.batch = InvariantBatch(inv, opts.n, opts.max_tokens, None, pool)
        # Fresh per prompt, as Engine.complete: sample k is seeded by (seed, k).
        self.state = decoder.new_state(opts, sample_generators(request.seed, opts.n, decoder.device))
        self.logits: torch.Tensor | None = None
        self.tokens: torch.Tensor | None = None  # the rows' next input tokens
        self.span: Span | None = None

    def sample(self) -> int:
        """This step's tokens (the serial loops' step); the rows still going (0: finished)."""
        assert self.logits is not None
        self.tokens = self.state.step(self.logits, self.batch.keep)
        return 0 if self.tokens is None else len(self.state.active)


class BatchLoop:
    """The engine's continuous-batching loop (see the module docs): ``decoder`` and ``scorer`` (whose
    ``invariant`` runner it steps), the model ``lock`` it holds per step, the ``stats`` it counts, and the
    ``scheduler`` that plans each step (its budgets and priority policy are the caller's)."""

    def __init__(
        self,
        decoder: Decoder,
        scorer: Scorer,
        lock: threading.Lock,
        stats: EngineStats,
        scheduler: Scheduler,
    ) -> None:
        assert scorer.invariant is not None, "continuous batching runs the batch-invariant forward"
        self.decoder, self.scorer, self.inv = decoder, scorer, scorer.invariant
        self.lock, self.stats = lock, stats
        self.scheduler = scheduler
        self.pool = self.inv.new_pool()  # every running generation's rows (one step's attention for all)
        self._cv = threading.Condition()
        self._incoming: list[_Request] = []
        self._cancelled: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._next_id = 0
        self._work: dict[int, tuple[_Request, _Generation | None]] = {}  # id -> request, its generation

    # ---------------------------------------------------------------------------------- submission
    def submit(
        self,
        prompts: list[list[int]],
        options: SamplingOptions,
        prompt_logprobs: int | None,
        seed: int,
        on_start: Callable[[], None] | None = None,
        priority: int = 0,
    ) -> Future[list[PromptResult]]:
        request = _Request(prompts, options, prompt_logprobs, seed, [PromptResult(p, None) for p in prompts])
        request.on_start, request.priority = on_start, priority
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._incoming.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mosaic-batch", daemon=True)
                self._thread.start()
            self._cv.notify()
        return request.future

    async def acomplete(
        self,
        prompts: list[list[int]],
        options: SamplingOptions,
        prompt_logprobs: int | None,
        seed: int,
        on_start: Callable[[], None] | None = None,
        priority: int = 0,
    ) -> list[PromptResult]:
        """:meth:`submit` and wait; cancelling the awaiting task (the client went away) cancels it."""
        future = self.submit(prompts, options, prompt_logprobs, seed, on_start, priority)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            self.cancel(future)
            raise

    def cancel(self, future: Future[list[PromptResult]]) -> None:
        with self._cv:
            for request in {r for r, _ in self._work.values()} | set(self._incoming):
                if request.future is future:
                    self._cancelled.append(request)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)  # ends after its current step (none left running at exit)

    # ------------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._incoming or self._cancelled or self._closed) and self.scheduler.idle:
                    self._cv.wait()
                if self._closed:
                    self._fail_all(RuntimeError("the engine is closed"))
                    return
                incoming, self._incoming = self._incoming, []
                cancelled, self._cancelled = self._cancelled, []
            for request in incoming:
                self._admit(request)
            for request in cancelled:
                self._drop(request)
                request.future.cancel()
            if self.scheduler.idle:
                continue
            try:
                with self.lock, torch.inference_mode():
                    self._step(self.scheduler.plan())
            except Exception as exc:  # a broken step fails what it held, never the loop
                log.exception("batch step failed")
                self._fail_all(exc)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _admit(self, request: _Request) -> None:
        opts = request.options
        self.stats.prompt_tokens += sum(len(p) for p in request.prompts)
        if request.prompt_logprobs is not None:
            keep_last = opts.max_tokens == 1
            request.score = self.scorer.invariant_job(request.prompts, request.prompt_logprobs, keep_last)
            work_id = self._new_id()
            self._work[work_id] = (request, None)
            request.work.add(work_id)
            self.scheduler.submit_scoring(work_id, request.score.costs, request.priority)
        if opts.max_tokens > 0 and not (request.prompt_logprobs is not None and opts.max_tokens == 1):
            for index, prompt in enumerate(request.prompts):
                work_id = self._new_id()
                self._work[work_id] = (
                    request,
                    _Generation(self.decoder, self.inv, request, index, self.pool),
                )
                request.work.add(work_id)
                self.scheduler.submit_generation(
                    work_id, len(prompt), opts.n, opts.max_tokens - 1, request.priority
                )
        if not request.work:
            self._answer(request)

    def _drop(self, request: _Request) -> None:
        for work_id in request.work:
            self.scheduler.cancel(work_id)
            _, gen = self._work.pop(work_id, (None, None))
            if gen is not None:
                gen.batch.release()  # its slots go back to the pool at once
        request.work.clear()

    def _fail_all(self, exc: BaseException) -> None:
        requests = {r for r, _ in self._work.values()}
        for request in requests:
            self._drop(request)
            if not request.future.done():
                request.future.set_exception(exc)
        old = self.scheduler
        self.scheduler = Scheduler(
            old.token_budget, old.max_rows, old.aging_steps, old.fill_tokens, old.pause_steps, old.pause_gap
        )
        self.pool = self.inv.new_pool()  # a failed step may have left slots half written
        with self._cv:
            incoming, self._incoming = self._incoming, []
        for request in incoming:
            request.future.set_exception(exc)

    # ------------------------------------------------------------------------------------ one step
    def _step(self, plan: StepPlan) -> None:
        """One step of ``plan``: start what joins, the model's passes, then sampling and answers."""
        self._start(plan.joined)
        joining = [self._generation(work_id) for work_id in plan.prefill]
        scoring = [(self._work[work_id][0], range(first, stop)) for work_id, first, stop in plan.score]
        for wave in (0, 1):
            self._forward_wave(wave, joining if wave == 0 else [], scoring)
        self._decode([self._generation(work_id) for work_id in plan.decode])
        for work_id in [*plan.prefill, *plan.decode]:
            self._sample(work_id)
        for work_id, _, _ in plan.score:
            request = self._work[work_id][0]
            assert request.score is not None
            if request.score.done:
                self._scored(request)
                self._finished(work_id)

    def _start(self, joined: list[int]) -> None:
        """``on_start`` of the requests whose first work is in this step."""
        for work_id in joined:
            request = self._work[work_id][0]
            if not request.started:
                request.started = True
                if request.on_start is not None:
                    request.on_start()

    def _forward_wave(
        self, wave: int, joining: list[_Generation], scoring: list[tuple[_Request, range]]
    ) -> None:
        """One forward over spans: wave 0 the joining prompts and the planned plain prompts and
        prefixes, wave 1 the planned suffixes."""
        spans: list[Span] = []
        for gen in joining:
            gen.span = gen.batch.prefill_span(gen.prompt)
            spans.append(gen.span)
        parts = []
        for request, units in scoring:
            assert request.score is not None
            part = request.score.spans(units, wave)
            parts.append(len(part))
            spans += part
        if not spans:
            return
        self.stats.forward_passes += 1
        hidden = self.inv.forward_spans(spans)
        for gen, rows in zip(joining, hidden, strict=False):
            assert gen.span is not None
            gen.logits = gen.batch.prefilled(gen.span, rows)
            if gen.request.options.n > 1:
                gen.logits = gen.logits.expand(gen.request.options.n, -1)
            gen.span = None
        offset = len(joining)
        for (request, units), count in zip(scoring, parts, strict=True):
            assert request.score is not None
            request.score.took(units, wave, hidden[offset : offset + count])
            offset += count

    def _decode(self, decoding: list[_Generation]) -> None:
        """One decode step of every running generation's rows (one pass over the pool)."""
        if not decoding:
            return
        groups = []
        for gen in decoding:
            assert gen.tokens is not None
            groups.append(gen.batch.step_group(gen.tokens))
        self.stats.forward_passes += 1
        hidden = self.inv.decode_groups(groups)
        logits = self.inv.logits(torch.cat(hidden)).split([h.shape[0] for h in hidden])
        for gen, rows in zip(decoding, logits, strict=True):
            gen.batch.stepped(rows)
            gen.logits = rows

    def _sample(self, work_id: int) -> None:
        gen = self._generation(work_id)
        left = gen.sample()
        self.scheduler.rows_finished(work_id, left)
        if not left:
            gen.batch.release()
            gen.request.results[gen.index].samples = gen.state.samples()
            self._finished(work_id)

    def _generation(self, work_id: int) -> _Generation:
        gen = self._work[work_id][1]
        assert gen is not None
        return gen

    def _scored(self, request: _Request) -> None:
        assert request.score is not None
        scored = request.score.results()
        opts = request.options
        for result, item in zip(request.results, scored, strict=True):
            result.scores = item.scores
            if opts.max_tokens == 1 and item.first_logits is not None:
                # The sampled token of a scoring request comes from the scoring pass (no forward).
                generators = sample_generators(request.seed, opts.n, self.decoder.device)
                result.samples = self.decoder.first_token(item.first_logits, opts, generators)
        request.score = None

    def _finished(self, work_id: int) -> None:
        request, _ = self._work.pop(work_id)
        request.work.discard(work_id)
        if not request.work:
            self._answer(request)

    def _answer(self, request: _Request) -> None:
        self.stats.generation_tokens += sum(len(s.token_ids) for r in request.results for s in r.samples)
        if not request.future.done():
            request.future.set_result(request.results)
