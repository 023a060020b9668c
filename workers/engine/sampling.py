"""Sampling: a request's options, vLLM's processed log-probs, the token draw and a request's
:class:`DecodeState` (the one decode step every decode loop shares: draw, record, stop rules, rows
that go on). Imports torch and :mod:`workers.engine.types`. See docs/DESIGN.md (the worker engine).

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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from workers.engine.types import Sample

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


def processed_logprobs(
    logits: torch.Tensor, temperature: float, top_p: float, banned: Sequence[int] = ()
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
        logits = top_p_filter(logits, top_p)
    return torch.log_softmax(logits, dim=-1)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
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


def draw(
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
            [torch.rand((1,), generator=g, device=logprobs.device, dtype=torch.float64) for g in generator]
        )
    drawn = inverse_cdf_sample(logprobs.exp(), uniforms)
    return torch.where(drawn >= logprobs.shape[-1], best, drawn)  # NaN rows (a broken model)


Top = tuple[torch.Tensor, torch.Tensor]  # top-k (values, ids) of each row's processed log-probs
Drawn = tuple[torch.Tensor, torch.Tensor, Top | None]  # token ids, their log-probs, top-k


def sample_step(
    logits: torch.Tensor,
    opts: SamplingOptions,
    generator: torch.Generator | Sequence[torch.Generator],
    banned: Sequence[int],
) -> Drawn:
    """Draw one token per row: (token ids, their processed log-probs, top-k values and ids)."""
    logprobs = processed_logprobs(logits, opts.temperature, opts.top_p, banned)
    drawn = draw(logprobs, opts.greedy, generator)
    chosen = logprobs.gather(1, drawn[:, None])[:, 0]
    k = opts.logprobs or 0
    top = None
    if opts.logprobs is not None and k > 0:
        values, ids = torch.topk(logprobs, k, dim=-1)
        top = (values, ids)
    return drawn, chosen, top


class TextDecoder(Protocol):
    """Token ids to text (the engine's tokenizer)."""

    def __call__(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...


HostDraw = tuple[list[int], list[float], tuple[list[list[float]], list[list[int]]]]  # a Drawn, read back


def host_draw(drawn: Drawn) -> HostDraw:
    """A step's draw as host lists (``([], [])`` for no top-k)."""
    tokens, chosen, top = drawn
    return tokens.tolist(), chosen.tolist(), (top[0].tolist(), top[1].tolist()) if top else ([], [])


class DecodeState:
    """One request's (or one prompt's) ``n`` samples while they decode: their generators, tokens,
    log-probs and stop rules. :meth:`step` is the decode step of every loop (serial legacy and fast,
    and the batch loop): draw for the active rows, record, apply the stop rules, drop finished rows.

    Invariant: the random draws are one per unfinished row per step, in row order, each from that
    sample's own generator, so a seed gives the same samples whichever loop decodes them.
    """

    def __init__(
        self,
        opts: SamplingOptions,
        eos_token_ids: frozenset[int],
        generators: list[torch.Generator],
        text: TextDecoder,
    ) -> None:
        self.opts, self.generators, self.text = opts, generators, text
        n = opts.n
        self.stop_ids = set(opts.stop_token_ids)
        self.eos_ids = set() if opts.ignore_eos else set(eos_token_ids)
        self.ending_ids = self.eos_ids | self.stop_ids
        self.min_banned = sorted((set(eos_token_ids) | self.stop_ids) if opts.min_tokens > 0 else set())
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.lps: list[list[float]] = [[] for _ in range(n)]
        self.tops: list[list[list[tuple[int, float]]]] = [[] for _ in range(n)]
        self.times: list[list[float]] = [[] for _ in range(n)]
        self.finish: list[tuple[str, int | str | None]] = [("length", None)] * n
        self.active = list(range(n))  # sample index of each row being decoded
        self.steps = 0  # steps drawn so far

    def draw(self, logits: torch.Tensor) -> Drawn:
        """This step's tokens of the active rows (``logits``: one row each), on the logits' device."""
        banned = self.min_banned if self.steps < self.opts.min_tokens else []
        return sample_step(logits, self.opts, [self.generators[s] for s in self.active], banned)

    def take(self, drawn: HostDraw) -> list[int] | None:
        """Record a step's draw of the active rows; the rows (positions among them) that decode on,
        which become the active rows, or None when the samples are finished (every row stopped, or
        ``max_tokens`` reached)."""
        still = self._record(*drawn)
        self.steps += 1
        if not still or self.steps == self.opts.max_tokens:
            return None
        self.active = [self.active[r] for r in still]
        return still

    def step(self, logits: torch.Tensor, drop_rows: Callable[[list[int]], None]) -> torch.Tensor | None:
        """One decode step: the next input token of each row that goes on (None: finished). When rows
        finish, ``drop_rows(kept)`` first tells the caller which rows its cache keeps."""
        drawn = self.draw(logits)
        kept = self.take(host_draw(drawn))
        if kept is None:
            return None
        tokens = drawn[0]
        if len(kept) < tokens.shape[0]:
            drop_rows(kept)
            tokens = tokens[torch.tensor(kept, dtype=torch.long, device=tokens.device)]
        return tokens

    def _record(
        self, drawn: list[int], chosen: list[float], top: tuple[list[list[float]], list[list[int]]]
    ) -> list[int]:
        """One step's tokens of the active rows; returns the rows (positions in ``active``) that go on."""
        opts = self.opts
        top_vals, top_ids = top
        still: list[int] = []
        now = time.perf_counter()
        for row, seq in enumerate(self.active):
            tok = int(drawn[row])
            value = float(chosen[row])
            self.tokens[seq].append(tok)
            self.times[seq].append(now)
            self.lps[seq].append(value)
            if opts.logprobs is not None:
                entry = [(tok, value)]
                if top_ids:
                    entry += [(i, v) for i, v in zip(top_ids[row], top_vals[row], strict=True) if i != tok]
                self.tops[seq].append(entry)
            if tok in self.ending_ids:
                self.finish[seq] = ("stop", tok if tok in self.stop_ids and tok not in self.eos_ids else None)
            elif opts.stop and (hit := self._stop_string_hit(self.tokens[seq])) is not None:
                self.finish[seq] = ("stop", hit)
            else:
                still.append(row)
        return still

    def _stop_string_hit(self, token_ids: list[int]) -> str | None:
        # Only the tail can contain a new match: decode a short window.
        skip = self.opts.skip_special_tokens
        tail = self.text(token_ids[-8:], skip_special_tokens=skip)
        for stop in self.opts.stop:
            if stop and stop in tail:
                full = self.text(token_ids, skip_special_tokens=skip)
                if stop in full:
                    return stop
        return None

    def samples(self) -> list[Sample]:
        out: list[Sample] = []
        for seq in range(self.opts.n):
            reason, stop_reason = self.finish[seq]
            sample = Sample(
                token_ids=self.tokens[seq],
                logprobs=self.lps[seq],
                top_logprobs=self.tops[seq] if self.opts.logprobs is not None else None,
                finish_reason=reason,
                stop_reason=stop_reason,
                token_times=self.times[seq],
            )
            sample.text = self._sample_text(sample)
            out.append(sample)
        return out

    def _sample_text(self, sample: Sample) -> str:
        opts = self.opts
        ids = sample.token_ids
        if sample.finish_reason == "stop" and not isinstance(sample.stop_reason, str) and ids:
            ids = ids[:-1]  # the EOS / stop token is returned in token_ids but not in the text
        text = self.text(ids, skip_special_tokens=opts.skip_special_tokens)
        if isinstance(sample.stop_reason, str):
            cut = text.find(sample.stop_reason)
            if cut >= 0:
                text = text[: cut + (len(sample.stop_reason) if opts.include_stop_str_in_output else 0)]
        return text
