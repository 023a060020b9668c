"""The pure parts of re-scoring (issue 35): comparing log-probs, naming identity differences, and the
record's `engine` built from a scored candidate set.

Invariants: bit for bit means the float64 bits (one ulp, or 0.0 vs -0.0, is a failure) and the
failure names the first differing value; within a tolerance means |diff| ≤ tolerance × reply tokens;
`identity_differences` lists exactly the dotted paths that differ; `engine_record` accounts for every
candidate and every scored sequence exactly once, with the engine and share that produced it.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from app.auction.engine_client import GeneratedCandidate, ScoredChunk
from app.auction.engine_record import engine_record
from app.auction.sampler import CandidateSet, ScoredCandidates
from app.verification.rescore_compare import (
    BF16_TOLERANCE,
    FP32_TOLERANCE,
    compare_values,
    default_tolerance,
    identity_checks,
    identity_differences,
    same_bits,
)

finite = st.floats(-1e4, 1e4, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=20), st.data())
def test_bit_for_bit_fails_on_one_ulp_and_names_the_first(values: list[float], data: st.DataObject) -> None:
    """Equal bits pass; one ulp off in value k fails naming value k (the first that differs)."""
    labels = [(f"candidate {j} log_ref", v) for j, v in enumerate(values)]
    tokens = [3] * len(values)
    exact = [None] * len(values)
    assert compare_values("rescore.log_ref", labels, list(values), exact, tokens).ok
    k = data.draw(st.integers(0, len(values) - 1))
    fresh = list(values)
    fresh[k] = math.nextafter(fresh[k], math.inf)
    check = compare_values("rescore.log_ref", labels, fresh, exact, tokens)
    assert not check.ok
    assert check.detail.startswith(f"candidate {k} log_ref:"), check.detail


def test_zero_signs_differ_bitwise() -> None:
    """-0.0 and 0.0 compare equal as numbers but not as bits."""
    assert not same_bits(0.0, -0.0) and same_bits(-1.5, -1.5) and same_bits(math.nan, math.nan)


@given(finite, st.integers(1, 200), st.floats(1e-6, 1.0))
def test_a_tolerance_is_per_reply_token(value: float, tokens: int, tolerance: float) -> None:
    """A difference of tolerance × tokens passes (to rounding), twice that fails."""
    inside = value + 0.5 * tolerance * tokens
    outside = value + 2.0 * tolerance * tokens
    labels = [("candidate 0 log_ref", value)]
    assert compare_values("x", labels, [inside], [tolerance], [tokens]).ok
    failed = compare_values("x", labels, [outside], [tolerance], [tokens])
    assert not failed.ok and "candidate 0 log_ref" in failed.detail


def test_identity_differences_name_every_differing_path() -> None:
    """Nested fields are named by their dotted path, with both values; equal identities: none."""
    base = {"model": "m", "kernels": {"threads": 1, "path": "inv"}, "hardware": {"cpu": {"isa": ["a"]}}}
    other = {"model": "m", "kernels": {"threads": 2, "path": "inv"}, "hardware": {"cpu": {"isa": ["b"]}}}
    assert identity_differences(base, base) == []
    assert identity_differences(base, other) == [
        "hardware.cpu.isa: ['a'] ≠ ['b']",
        "kernels.threads: 1 ≠ 2",
    ]
    assert identity_differences({"a": 1}, {}) == ["a: 1 ≠ None"]


def test_the_default_tolerance_is_by_dtype_and_device() -> None:
    """fp32 on CPU on both sides: the fp32 tolerance; bf16 or a GPU anywhere: the bf16 one."""
    cpu32 = {"dtype": "float32", "device": "cpu"}
    assert default_tolerance([cpu32], cpu32) == FP32_TOLERANCE
    assert default_tolerance([cpu32], {"dtype": "bfloat16", "device": "cpu"}) == BF16_TOLERANCE
    assert default_tolerance([cpu32], {"dtype": "float32", "device": "cuda"}) == BF16_TOLERANCE


@given(
    pools=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3), min_size=1, max_size=2),
    groups=st.integers(1, 5),
    workers=st.integers(1, 3),
)
def test_engine_record_accounts_for_every_candidate_and_sequence(
    pools: list[list[int]], groups: int, workers: int
) -> None:
    """Each generation request becomes one `generated` entry [engine, share, first, stop] covering its
    candidates; each scoring chunk one `scored` entry; identities in order of first use."""
    candidates: list[GeneratedCandidate] = []
    sources = []
    for pool, shares in zip(("context", "reference"), pools, strict=False):
        for share, count in enumerate(shares):
            engine = f"e{share % workers}"
            candidates += [GeneratedCandidate([1, 2], "t", "length", -1.0, engine, share)] * count
            sources += [pool] * count
    m = len(candidates)
    chunks = tuple(ScoredChunk(g * m, (g + 1) * m, f"e{g % workers}") for g in range(groups))
    scored = ScoredCandidates(
        candidate_set=CandidateSet(candidates, sources, 0.5),  # type: ignore[arg-type]
        log_ref=np.zeros(m),
        log_advertisers=np.zeros((groups - 1, m)),
        log_proposal=np.zeros(m),
        log_context=None,
        score_chunks=chunks,
        identities={f"e{k}": {"model": "x", "n": k} for k in range(workers)},
        max_tokens=7,
    )
    record = engine_record(scored)
    ids = [identity.id for identity in record.identities]
    assert len(set(ids)) == len(ids)
    covered = [j for _, _, first, stop in record.generated for j in range(first, stop)]
    assert covered == list(range(m))
    assert len(record.generated) == sum(len(shares) for shares in pools)
    for engine, share, first, stop in record.generated:
        assert all(ids[engine] == c.engine_id and c.share == share for c in candidates[first:stop])
    assert [(a, b) for _, a, b in record.scored] == [(c.start, c.stop) for c in chunks]
    assert [ids[k] for k, _, _ in record.scored] == [c.engine_id for c in chunks]
    assert record.max_tokens == 7
    assert all(identity.identity["model"] == "x" for identity in record.identities)


def test_each_value_is_compared_by_the_rule_of_the_engine_that_produced_it() -> None:
    """With two engines recorded, one the worker's own: the sequences and draws of that one compare
    bit for bit, the other's within the tolerance; the mode names the differing field of the other."""
    worker = {
        "model": "m",
        "weights_sha256": "w",
        "dtype": "bfloat16",
        "device": "cpu",
        "kernels": {"threads": 1},
    }
    other = {**worker, "kernels": {"threads": 2}}
    engine = {
        "identities": [{"id": "a", "identity": worker}, {"id": "b", "identity": other}],
        "scored": [[0, 0, 4], [1, 4, 8]],
        "generated": [[1, 0, 0, 2], [0, 1, 2, 4]],
    }
    checks, strictness = identity_checks(engine, worker, None)
    assert strictness is not None and all(check.ok for check in checks)
    assert "engine 1: kernels.threads: 2 ≠ 1" in checks[1].detail
    assert [strictness.sequence(s) for s in range(8)] == [None] * 4 + [BF16_TOLERANCE] * 4
    assert [strictness.draw(j) for j in range(4)] == [BF16_TOLERANCE] * 2 + [None] * 2
    assert strictness.sequence(None) == BF16_TOLERANCE  # a sealed row: unknown engine, the looser rule
    labels = [(f"candidate {j} log_ref", -1.0) for j in range(2)]
    mixed = compare_values("x", labels, [-1.0, -1.01], [None, 0.1], [1, 1])
    assert mixed.ok and "1 bit for bit, 1 within 0.1" in mixed.detail
    assert not compare_values("x", labels, [-1.0 + 1e-15, -1.0], [None, 0.1], [1, 1]).ok


def test_another_model_or_unread_identity_fails_naming_it() -> None:
    """A worker whose model or weights differ from any recorded engine fails `rescore.engine` naming
    the field; an identity the gateway could not read fails naming that."""
    worker = {"model": "m", "weights_sha256": "w"}
    engine = {"identities": [{"id": "a", "identity": {**worker, "weights_sha256": "x"}}]}
    checks, strictness = identity_checks(engine, worker, None)
    assert strictness is None and not checks[0].ok
    assert "engine.identities[0].identity.weights_sha256" in checks[0].detail
    checks, _ = identity_checks(
        {"identities": [{"id": "a", "identity": {"unread": "timeout"}}]}, worker, None
    )
    assert not checks[0].ok and "timeout" in checks[0].detail


def test_a_sealed_row_is_bit_for_bit_only_on_a_batch_invariant_engine() -> None:
    """A sealed view cannot send the gateway's batches again: its rows compare bit for bit only when
    the recorded engine is the worker's AND batch-invariant; on the fp32 transformers path (rows
    depend on their batch, to float noise) within the fp32 tolerance."""
    base = {"model": "m", "weights_sha256": "w", "dtype": "float32", "device": "cpu"}
    for path, expected in (("invariant", None), ("transformers", FP32_TOLERANCE)):
        identity = {**base, "kernels": {"path": path}}
        engine = {"identities": [{"id": "a", "identity": identity}], "scored": [[0, 0, 4]], "generated": []}
        _, strictness = identity_checks(engine, identity, None)
        assert strictness is not None
        assert strictness.sequence(None) == expected
        assert strictness.sequence(2) is None  # the full view replays the batch: bit for bit
