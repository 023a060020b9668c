"""Admission control (app.auction.admission): limits, the bounded wait, fairness, and that no sequence of
arrivals, completions and cancellations leaks a place (property test over random schedules)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from app.auction.admission import (
    AdmissionController,
    AdmissionLimits,
    AdmissionRefusedError,
    TokenThroughput,
    fair_priority,
)
from app.gateway.metrics import AdmissionMetrics


def _limits(**overrides: float) -> AdmissionLimits:
    values: dict[str, float] = {
        "max_concurrent": 2,
        "max_per_key": 2,
        "max_tokens_in_flight": 1000,
        "max_waiting": 2,
        "max_wait_s": 5.0,
        "key_share": 1.0,
    }
    values.update(overrides)
    return AdmissionLimits(
        max_concurrent=int(values["max_concurrent"]),
        max_per_key=int(values["max_per_key"]),
        max_tokens_in_flight=int(values["max_tokens_in_flight"]),
        max_waiting=int(values["max_waiting"]),
        max_wait_s=float(values["max_wait_s"]),
        key_share=float(values["key_share"]),
    )


class _ShareChecked(AdmissionController):
    """Records every admission that takes a key past its share while another key waits."""

    def __init__(self, limits: AdmissionLimits) -> None:
        super().__init__(limits)
        self.violations: list[str] = []

    def _take(self, key: str, cost: int) -> None:
        held = self.key_tokens(key)
        share = self.limits.key_share * self.limits.max_tokens_in_flight
        if held and held + cost > share and self._others_wait(key):
            self.violations.append(f"share {key} {held}+{cost}")
        super()._take(key, cost)


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 10))


async def _hold(
    controller: AdmissionController, key: str, cost: int, release: asyncio.Event, log: list[str]
) -> None:
    async with controller.admit(key, cost):
        log.append(f"in {key}{cost}")
        await release.wait()


def test_past_the_queue_refused_with_retry_after_and_counted() -> None:
    async def body() -> None:
        registry = CollectorRegistry()
        controller = AdmissionController(_limits(max_waiting=1), AdmissionMetrics(registry))
        release, log = asyncio.Event(), []
        running = [asyncio.create_task(_hold(controller, "a", 1, release, log)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert (controller.in_flight, controller.waiting) == (2, 1)
        with pytest.raises(AdmissionRefusedError) as refused:
            async with controller.admit("b", 1):
                raise AssertionError("must not be admitted")
        assert refused.value.reason == "queue_full" and refused.value.retry_after_s >= 1
        assert registry.get_sample_value("mosaic_admission_refused_total", {"reason": "queue_full"}) == 1
        assert registry.get_sample_value("mosaic_admission_queue_depth") == 1
        release.set()
        await asyncio.gather(*running)
        assert (controller.in_flight, controller.waiting) == (0, 0) and len(log) == 3

    _run(body)


def test_a_wait_past_the_limit_is_refused() -> None:
    async def body() -> None:
        controller = AdmissionController(_limits(max_concurrent=1, max_wait_s=0.05))
        release = asyncio.Event()
        holder = asyncio.create_task(_hold(controller, "a", 1, release, []))
        await asyncio.sleep(0.01)
        with pytest.raises(AdmissionRefusedError) as refused:
            async with controller.admit("b", 1):
                pass
        assert refused.value.reason == "wait_timeout" and controller.waiting == 0
        release.set()
        await holder

    _run(body)


def test_tokens_limit_but_a_lone_auction_always_runs() -> None:
    async def body() -> None:
        controller = AdmissionController(_limits(max_concurrent=5, max_tokens_in_flight=100, max_wait_s=0.05))
        async with controller.admit("a", 10_000):  # over the limit alone: admitted, nothing else runs
            with pytest.raises(AdmissionRefusedError):
                async with controller.admit("b", 1):
                    pass

    _run(body)


def test_fifo_for_global_limits_and_keys_do_not_block_each_other() -> None:
    async def body() -> None:
        controller = AdmissionController(_limits(max_concurrent=2, max_per_key=1, max_waiting=5))
        release_a, release_b, log = asyncio.Event(), asyncio.Event(), []
        first = asyncio.create_task(_hold(controller, "a", 1, release_a, log))
        await asyncio.sleep(0.01)
        # a second "a" waits for its key; a "b" behind it is not held up by that.
        second_a = asyncio.create_task(_hold(controller, "a", 2, release_b, log))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(_hold(controller, "b", 3, release_b, log))
        await asyncio.sleep(0.01)
        assert log == ["in a1", "in b3"]
        release_a.set()
        await first
        await asyncio.sleep(0.01)
        assert log == ["in a1", "in b3", "in a2"]
        release_b.set()
        await asyncio.gather(second_a, b)

    _run(body)


def test_a_large_waiter_is_not_overtaken_by_small_ones() -> None:
    """No starvation: with a large auction waiting for tokens, a small one that would fit waits behind it."""

    async def body() -> None:
        controller = AdmissionController(_limits(max_concurrent=5, max_tokens_in_flight=100, max_waiting=5))
        release_first, release_rest, log = asyncio.Event(), asyncio.Event(), []
        first = asyncio.create_task(_hold(controller, "a", 60, release_first, log))
        await asyncio.sleep(0.01)
        large = asyncio.create_task(_hold(controller, "b", 80, release_rest, log))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(_hold(controller, "c", 10, release_rest, log))
        await asyncio.sleep(0.01)
        assert log == ["in a60"] and controller.waiting == 2
        release_first.set()
        await first
        await asyncio.sleep(0.01)
        assert log == ["in a60", "in b80", "in c10"]
        release_rest.set()
        await asyncio.gather(large, small)

    _run(body)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(1, 400), st.floats(0, 0.004), st.booleans()),
        min_size=1,
        max_size=25,
    ),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([0.3, 0.5, 1.0]),
)
def test_no_place_leaks_and_no_limit_is_passed(
    schedule: list[tuple[str, int, float, bool]], max_concurrent: int, max_per_key: int, share: float
) -> None:
    """Random arrivals, durations and client cancellations: limits hold at every moment (a key takes
    tokens past its share only while no other key waits, or holding nothing), and at the end nothing is
    in flight or waiting."""

    async def body() -> None:
        limits = _limits(
            max_concurrent=max_concurrent,
            max_per_key=max_per_key,
            max_tokens_in_flight=600,
            max_waiting=6,
            key_share=share,
        )
        controller = _ShareChecked(limits)
        violations = controller.violations

        async def one(key: str, cost: int, duration: float) -> None:
            try:
                async with controller.admit(key, cost):
                    if controller.in_flight > 1 and (
                        controller.in_flight > max_concurrent or controller._tokens > 600
                    ):
                        violations.append(f"{controller.in_flight} {controller._tokens}")
                    if controller._per_key.get(key, 0) > max_per_key:
                        violations.append(f"key {key}")
                    await asyncio.sleep(duration)
            except AdmissionRefusedError:
                pass

        tasks = []
        for key, cost, duration, cancel in schedule:
            task = asyncio.create_task(one(key, cost, duration))
            tasks.append((task, cancel))
            await asyncio.sleep(0)
        for task, cancel in tasks:
            if cancel:
                task.cancel()
        await asyncio.gather(*(task for task, _ in tasks), return_exceptions=True)
        assert violations == []
        assert (controller.in_flight, controller.waiting, controller._tokens) == (0, 0, 0)
        assert controller._per_key == {}

    _run(body)


def test_a_light_key_gets_the_next_capacity_before_a_heavy_keys_stream() -> None:
    """Fair share: with a heavy key's auctions running and more of them waiting, a light key's auction
    that arrives later is admitted at the first release (before the heavy key's older waiters)."""

    async def body() -> None:
        controller = AdmissionController(
            _limits(max_concurrent=10, max_tokens_in_flight=100, max_waiting=10, key_share=0.5)
        )
        log: list[str] = []
        heavy = [asyncio.Event() for _ in range(4)]
        light = asyncio.Event()
        tasks = [asyncio.create_task(_hold(controller, "h", 50, heavy[i], log)) for i in range(2)]
        await asyncio.sleep(0.01)  # the heavy key uses the idle capacity (nobody waits)
        tasks += [asyncio.create_task(_hold(controller, "h", 50, heavy[i], log)) for i in (2, 3)]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(_hold(controller, "l", 30, light, log)))
        await asyncio.sleep(0.01)
        assert log == ["in h50", "in h50"] and controller.waiting == 3
        heavy[0].set()
        await asyncio.sleep(0.01)
        assert log[-1] == "in l30", log  # FIFO would admit the older heavy waiter
        assert controller.key_tokens("h") == 50
        for event in (*heavy, light):
            event.set()
        await asyncio.gather(*tasks)
        assert (controller.in_flight, controller.waiting) == (0, 0)

    _run(body)


def test_a_key_past_its_share_is_skipped_while_another_waits() -> None:
    """A key that holds tokens may not take more than its share while another key's auction waits;
    the other key's waiter is not held up by it."""

    async def body() -> None:
        controller = AdmissionController(
            _limits(max_concurrent=3, max_per_key=5, max_tokens_in_flight=100, max_waiting=10, key_share=0.5)
        )
        log: list[str] = []
        release_a, release_b, rest = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(_hold(controller, "a", 40, release_a, log)),
            asyncio.create_task(_hold(controller, "b", 5, release_b, log)),
            asyncio.create_task(_hold(controller, "a", 5, rest, log)),
        ]
        await asyncio.sleep(0.01)  # three running: the concurrency limit
        tasks.append(asyncio.create_task(_hold(controller, "a", 20, rest, log)))  # a: 45 + 20 > 50
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(_hold(controller, "c", 30, rest, log)))
        await asyncio.sleep(0.01)
        release_b.set()  # one place: a's waiter is older but a is past its share while c waits
        await asyncio.sleep(0.01)
        assert log[-1] == "in c30", log
        release_a.set()  # a now holds 5: its waiter fits its share
        await asyncio.sleep(0.01)
        assert log[-1] == "in a20", log
        rest.set()
        await asyncio.gather(*tasks)

    _run(body)


def test_a_heavy_stream_never_delays_a_light_key_by_more_than_one_release() -> None:
    """Simulated stream: a heavy key keeps four 50-token auctions running or waiting (capacity 100), a
    light key sends 5-token auctions one after another; each light auction is admitted at once or at
    the next release, for 20 rounds."""

    async def body() -> None:
        controller = AdmissionController(
            _limits(max_concurrent=16, max_tokens_in_flight=100, max_waiting=16, key_share=0.5)
        )
        log: list[str] = []
        running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

        def heavy() -> None:
            event = asyncio.Event()
            running.append((event, asyncio.create_task(_hold(controller, "h", 50, event, log))))

        for _ in range(4):
            heavy()
            await asyncio.sleep(0)
        for _ in range(20):
            release = asyncio.Event()
            light = asyncio.create_task(_hold(controller, "l", 5, release, log))
            await asyncio.sleep(0.001)
            if log[-1] != "in l5":
                event, task = running.pop(0)  # one heavy auction ends, the stream sends the next
                event.set()
                await task
                heavy()
                await asyncio.sleep(0.001)
            assert log[-1] == "in l5" or "in l5" in log[-3:], log[-6:]
            release.set()
            await light
        for event, _ in running:
            event.set()
        await asyncio.gather(*(task for _, task in running))
        assert (controller.in_flight, controller.waiting) == (0, 0)

    _run(body)


def test_retry_after_is_the_tokens_ahead_over_the_measured_throughput() -> None:
    """Retry-After: (tokens running + waiting ahead + its own - capacity) / tokens per busy second."""
    meter = TokenThroughput(prior_tokens_per_s=1.0)
    meter.started(0.0)
    meter.finished(1000, 0.5)  # 2000 tokens per second of busy time
    meter.started(10.0)  # idle time between does not count
    meter.finished(1000, 10.5)
    assert meter.tokens_per_s() == pytest.approx(2000.0)

    async def body() -> None:
        controller = AdmissionController(_limits(max_concurrent=5, max_tokens_in_flight=1000, max_waiting=0))
        controller.throughput = meter
        async with controller.admit("a", 1000):
            with pytest.raises(AdmissionRefusedError) as refused:
                async with controller.admit("b", 9000):
                    pass
        assert refused.value.retry_after_s == 5  # (1000 + 9000 - 1000) / 2000 = 4.5 s

    _run(body)


def test_admit_yields_the_fair_share_priority_a_light_key_first() -> None:
    """Invariant: an admitted auction's vLLM priority (lower first) is the ⌊log2⌋+1 bucket of what its
    key holds in flight with it: a light key's auction beside a heavy key's stream gets a lower number;
    keys within 2x of each other share a bucket (arrival order among them in the workers)."""
    assert [fair_priority(t) for t in (0, 1, 2, 3, 1023, 1024, 131_072)] == [0, 1, 2, 2, 10, 11, 18]
    controller = AdmissionController(_limits(max_tokens_in_flight=200_000, max_per_key=4, max_concurrent=8))
    got: dict[str, int] = {}

    async def body() -> None:
        async with controller.admit("heavy", 120_000) as heavy:
            got["heavy"] = heavy
            async with controller.admit("light", 3_000) as light:
                got["light"] = light
                async with controller.admit("heavy", 20_000) as again:
                    got["heavy again"] = again
        async with controller.admit("heavy", 3_000) as alone:
            got["heavy alone"] = alone

    _run(body)
    assert got == {"heavy": 17, "light": 12, "heavy again": 18, "heavy alone": 12}
