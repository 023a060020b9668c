"""The worker's token draw (workers.engine.sampling.inverse_cdf_sample): the two-level inverse CDF picks the
same token as one float64 cumulative sum over the vocabulary, never a token of probability 0, and
its frequencies match the probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from workers.engine.sampling import draw, inverse_cdf_sample

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_draw(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One float64 cumulative sum over the whole vocabulary, searched on the right (the definition)."""
    cdf = np.cumsum(probs.astype(np.float64), axis=-1)
    return np.array(
        [np.searchsorted(cdf[row], uniforms[row] * cdf[row, -1], side="right") for row in range(len(probs))]
    )


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(1, 1500),
    rows=st.integers(1, 6),
    block=st.sampled_from([1, 3, 16, 64, 256]),
    zero_share=st.sampled_from([0.0, 0.5, 0.95]),
)
def test_two_level_draw_equals_one_cumulative_sum(
    seed: int, vocab: int, rows: int, block: int, zero_share: float
) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(rows, vocab))
    logits[rng.random((rows, vocab)) < zero_share] = -np.inf  # masked tokens (top-p, bans)
    logits[np.arange(rows), rng.integers(0, vocab, rows)] = 0.0  # at least one token per row
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), dim=-1)
    uniforms = rng.random(rows)
    drawn = inverse_cdf_sample(probs, torch.tensor(uniforms), block=block).numpy()
    np.testing.assert_array_equal(drawn, reference_draw(probs.numpy(), uniforms))
    assert (probs.numpy()[np.arange(rows), drawn] > 0).all()


@pytest.mark.parametrize("block", [1, 4, 256])
def test_ends_of_the_unit_interval_draw_positive_tokens(block: int) -> None:
    """u = 0 draws the first token of positive probability; u just below 1 the last one, even where
    rounding of u·total reaches the total (a zero-probability tail must not be drawn)."""
    probs = torch.zeros((2, 1000), dtype=torch.float32)
    probs[:, 300] = 0.2
    probs[:, 517] = 0.5
    probs[:, 700] = 0.3  # tokens 701..999 (several whole blocks) have probability 0
    uniforms = torch.tensor([0.0, np.nextafter(1.0, 0.0)], dtype=torch.float64)
    assert inverse_cdf_sample(probs, uniforms, block=block).tolist() == [300, 700]


def test_frequencies_match_probabilities() -> None:
    generator = torch.Generator().manual_seed(1234)
    vocab, draws = 300, 40_000
    logits = torch.randn((1, vocab), generator=generator) * 2
    logprobs = torch.log_softmax(logits, dim=-1)
    drawn = draw(logprobs.expand(draws, -1), greedy=False, generator=generator)
    counts = np.bincount(drawn.numpy(), minlength=vocab)
    expected = logprobs.exp()[0].double().numpy() * draws
    # Pool the rare tokens so every cell expects at least 5 draws (chi-square validity).
    order = np.argsort(expected)
    rare = order[np.cumsum(expected[order]) < 50]
    frequent = np.setdiff1d(np.arange(vocab), rare)
    observed = np.append(counts[frequent], counts[rare].sum())
    wanted = np.append(expected[frequent], expected[rare].sum())
    result = stats.chisquare(observed, wanted * observed.sum() / wanted.sum())
    assert result.pvalue > 1e-4, result


def test_draw_is_reproducible_and_greedy_is_argmax() -> None:
    logprobs = torch.log_softmax(torch.randn((8, 49152)), dim=-1)
    first = draw(logprobs, greedy=False, generator=torch.Generator().manual_seed(7))
    again = draw(logprobs, greedy=False, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    greedy = draw(logprobs, greedy=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(greedy, logprobs.argmax(dim=-1))
