"""Sampling: a request's options, vLLM's processed log-probs and the token draw, as the methods of
:class:`SamplingMixin` (part of :class:`workers.engine.core.Engine`; they use no engine state). Imports
torch only, nothing of ``workers``.

Sampling and the returned log-probs (vLLM ``--logprobs-mode processed_logprobs``)
    ``logits / T`` → top-p filter (vLLM's rule: sort ascending, drop the tokens whose cumulative
    probability is ≤ 1 − p, always keep the most likely) → ``log_softmax``. The token is drawn from
    that distribution with the request's ``torch.Generator`` and its log-prob under it is returned,
    so ``sum(token_logprobs)`` is log q(y) of the reply under the distribution it was sampled from.
    Temperature < 1e-5 means greedy (argmax); as in vLLM, the temperature is then taken as 1 for the
    log-probs (top-p still applied). The sampled EOS token is part of ``token_ids`` and of the
    log-probs; the text leaves it out.
    The draw: one uniform per row, inverted through the float64 CDF (:func:`inverse_cdf_sample`).
    Each sample has its own generator (:func:`sample_generators`: seeded from the request's seed and
    the sample's index), so sample k of a seeded request is the same whatever n is, whichever other
    samples finish first and whatever else the worker runs (batch invariance of generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class SamplingOptions:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a request seeded ``seed`` (a SplitMix64 step: independent streams)."""
    value = (seed + 0x9E3779B97F4A7C15 * (index + 1)) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (value ^ (value >> 31)) % (2**63)


def sample_generators(seed: int, n: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample of a request seeded ``seed``."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, k)) for k in range(n)]


SAMPLE_BLOCK = 256  # tokens per block of the two-level CDF (about √vocab for 50k-token vocabularies)


def inverse_cdf_sample(
    probs: torch.Tensor, uniforms: torch.Tensor, block: int = SAMPLE_BLOCK
) -> torch.Tensor:
    """Token ``j`` per row with ``CDF[j-1] <= u·total < CDF[j]``: ``probs`` [rows, V] (unnormalised,
    ≥ 0, positive total), ``uniforms`` [rows] in [0, 1), float64 arithmetic.

    Two levels, the same token as one float64 cumulative sum over the whole vocabulary: the block
    whose cumulative mass passes ``u·total`` (float64 sums of ``block`` tokens, a cumulative sum over
    V/block of them), then the token inside that block (a cumulative sum of ``block`` values). Why:
    a float64 cumulative sum over 49k tokens runs sequentially per row (3.1 ms for 8 rows on a
    2-core CPU, 0.5 ms this way). A token of probability 0 is never drawn (its interval is empty;
    rounding at the ends of an interval is clamped into it).
    """
    rows, vocab = probs.shape
    pad = (-vocab) % block
    padded = F.pad(probs, (0, pad)) if pad else probs
    blocks = padded.reshape(rows, -1, block)
    block_cdf = blocks.sum(dim=-1, dtype=torch.float64).cumsum(dim=-1)  # [rows, V / block]
    total = block_cdf[:, -1:]
    zero = torch.zeros_like(total)
    target = torch.minimum(uniforms.to(torch.float64)[:, None] * total, torch.nextafter(total, zero))
    chosen_block = torch.searchsorted(block_cdf, target, right=True)  # [rows, 1]: its mass passes target
    before = torch.where(chosen_block > 0, block_cdf.gather(1, (chosen_block - 1).clamp(min=0)), zero)
    inner = blocks.gather(1, chosen_block[:, :, None].expand(-1, -1, block))[:, 0]
    inner_cdf = inner.cumsum(dim=-1, dtype=torch.float64)  # [rows, block]
    inner_total = inner_cdf[:, -1:]
    rest = torch.minimum((target - before).clamp(min=0.0), torch.nextafter(inner_total, zero))
    within = torch.searchsorted(inner_cdf, rest, right=True)
    return (chosen_block * block + within)[:, 0]


class SamplingMixin:
    """The sampling steps of :class:`workers.engine.core.Engine` (no state of their own)."""

    def processed_logprobs(
        self, logits: torch.Tensor, temperature: float, top_p: float, banned: Sequence[int] = ()
    ) -> torch.Tensor:
        """vLLM's processed log-probs of ``logits`` [B, V]: ``log_softmax(top_p(logits / T))``."""
        logits = logits.float()
        if banned:
            logits = logits.clone()
            logits[:, list(banned)] = float("-inf")
        temp = temperature if temperature >= SAMPLING_EPS else 1.0
        if temp != 1.0:
            logits = logits / temp
        if top_p < 1.0:
            logits = self._top_p_filter(logits, top_p)
        return torch.log_softmax(logits, dim=-1)

    @staticmethod
    def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
        """Keep the most likely tokens whose preceding mass is < p (vLLM's nucleus), mask the rest.

        Equivalent to vLLM's ascending sort + ``cumsum <= 1 - p`` mask, but looks only at the top-k
        candidates (k grows until they hold mass ≥ p in every row), avoiding a full-vocabulary sort.
        """
        vocab = logits.shape[-1]
        probs = logits.softmax(dim=-1)
        k = min(vocab, 256)
        while True:
            top_probs, top_idx = probs.topk(k, dim=-1)  # sorted, most likely first
            if k == vocab or bool((top_probs.sum(dim=-1) >= top_p).all()):
                break
            k = min(vocab, k * 8)
        keep_top = (top_probs.cumsum(dim=-1) - top_probs) < top_p
        keep_top[:, 0] = True
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top_idx, keep_top)
        return logits.masked_fill(~keep, float("-inf"))

    @staticmethod
    def _draw(
        logprobs: torch.Tensor, greedy: bool, generator: torch.Generator | Sequence[torch.Generator]
    ) -> torch.Tensor:
        """One token per row from ``exp(logprobs)``: argmax when greedy, else inverse-CDF sampling.

        One uniform draw per row, from ``generator`` (one for all rows) or from the row's own
        generator (a sequence: one per row; a row's draw is then independent of the others), inverted
        through the float64 CDF by :func:`inverse_cdf_sample` (no token's probability is distorted by
        rounding).
        """
        best = logprobs.argmax(dim=-1)
        if greedy:
            return best
        if isinstance(generator, torch.Generator):
            uniforms = torch.rand(
                (logprobs.shape[0],), generator=generator, device=logprobs.device, dtype=torch.float64
            )
        else:
            uniforms = torch.cat(
                [
                    torch.rand((1,), generator=g, device=logprobs.device, dtype=torch.float64)
                    for g in generator
                ]
            )
        drawn = inverse_cdf_sample(logprobs.exp(), uniforms)
        return torch.where(drawn >= logprobs.shape[-1], best, drawn)  # NaN rows (a broken model)

    def _sample_step(
        self,
        logits: torch.Tensor,
        opts: SamplingOptions,
        generator: torch.Generator | Sequence[torch.Generator],
        banned: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Draw one token per row: (token ids, their processed log-probs, top-k values and ids)."""
        logprobs = self.processed_logprobs(logits, opts.temperature, opts.top_p, banned)
        drawn = self._draw(logprobs, opts.greedy, generator)
        chosen = logprobs.gather(1, drawn[:, None])[:, 0]
        k = opts.logprobs or 0
        top = None
        if opts.logprobs is not None and k > 0:
            values, ids = torch.topk(logprobs, k, dim=-1)
            top = (values, ids)
        return drawn, chosen, top
