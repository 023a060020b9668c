"""bf16 vs fp32 weights on CPU: what the faster dtype costs the auction in precision, and what it buys.

WORKER_DTYPE=auto runs bf16 on CPUs with native bf16 (vLLM's CPU default). This measures, on the
paper's instances (``../shared/data/instances.jsonl``), SmolLM2, in process (the worker's engine):

* precision: M candidates per instance are drawn once (fp32, fixed seed) and scored under every
  prompt the auction needs (context, reference, each advertiser) by an fp32 and a bf16 engine; the
  auction is then resolved on the same candidates with each dtype's numbers (log q = the context
  score, as the generation reports it; same allocation seed). Reported: |Δ log-prob| per token and
  per reply, the allocation's total-variation distance, the payments' absolute difference (value
  units), and how often the same candidate is chosen.
* speed: decode (n=1 and n=8, 64 tokens, ignore_eos) and scoring throughput, each dtype.

    .venv/bin/python bench/dtype.py                      # 6 instances, M=8, 64 tokens
    .venv/bin/python bench/dtype.py --instances 40 --candidates 16

Last line: ``bf16_decode_speedup=<x> bf16_score_speedup=<x> token_abs_err_p50=<nats>
seq_abs_err_p50=<nats> allocation_tv_p50=<p> payment_abs_err_p50=<units>``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from app import mechanism  # noqa: E402
from app.evaluation.instances import load_instances  # noqa: E402
from app.prompts import (  # noqa: E402
    AdvertiserProfile,
    advertiser_messages,
    context_messages,
    reference_messages,
)
from bench.common import engine_config, median_time, rich_table  # noqa: E402
from workers.engine.core import Engine  # noqa: E402
from workers.engine.sampling import SamplingOptions  # noqa: E402
from workers.models import cpu_has_native_bf16, load_model  # noqa: E402

INSTANCES = REPO.parent / "shared" / "data" / "instances.jsonl"


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return float(np.median(ordered)), float(np.quantile(ordered, 0.9)), float(ordered[-1])


def reply_scores(
    engine: Engine, prompts: list[list[int]], replies: list[list[int]]
) -> tuple[np.ndarray, list[list[float]]]:
    """(contexts, M) log-prob of each reply under each prompt, and the per-token lists."""
    sequences = [prompt + reply for prompt in prompts for reply in replies]
    scored = engine.score(sequences)
    sums = np.empty(len(sequences))
    tokens: list[list[float]] = []
    for k, (sequence, result) in enumerate(zip(sequences, scored, strict=True)):
        start = len(sequence) - len(replies[k % len(replies)])
        values = [float(v) for v in result.token_logprobs[start:] if v is not None]
        tokens.append(values)
        sums[k] = sum(values)
    return sums.reshape(len(prompts), len(replies)), tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--instances", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (medians)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    engines = {
        dtype: Engine(load_model(args.model, "cpu", dtype), engine_config())
        for dtype in ("float32", "bfloat16")
    }
    fp32 = engines["float32"]
    token_errors: list[float] = []
    sequence_errors: list[float] = []
    allocation_tv: list[float] = []
    payment_errors: list[float] = []
    payment_sizes: list[float] = []
    same_choice = 0
    instances = load_instances(INSTANCES, args.instances)
    for index, instance in enumerate(tqdm(instances, desc="instances")):
        profiles = [
            AdvertiserProfile(name=a["name"], description=a["description"], instruction=a.get("instruction"))
            for a in instance.advertisers
        ]
        chats = [
            context_messages(instance.query, profiles),
            reference_messages(instance.query),
            *(advertiser_messages(instance.query, profile) for profile in profiles),
        ]
        prompts = [fp32.tokenize_chat(list(chat)) for chat in chats]
        options = SamplingOptions(n=args.candidates, max_tokens=args.max_tokens, seed=args.seed + index)
        replies = [sample.token_ids for sample in fp32.complete([prompts[0]], options)[0].samples]
        outcomes = {}
        per_token = {}
        for name, engine in engines.items():
            scores, tokens = reply_scores(engine, prompts, replies)
            per_token[name] = tokens
            log_proposal, log_ref, log_advertisers = scores[0], scores[1], scores[2:]
            rewards = mechanism.rewards_from_logprobs(log_advertisers, log_ref, instance.value_scales)
            tau = mechanism.default_tau(len(profiles))
            rng = np.random.default_rng(args.seed + index)
            outcomes[name] = (
                mechanism.run_auction(rewards, log_ref, log_proposal, tau, rng),
                scores,
            )
        for exact, rounded in zip(per_token["float32"], per_token["bfloat16"], strict=True):
            token_errors.extend(abs(a - b) for a, b in zip(exact, rounded, strict=True))
        exact_outcome, exact_scores = outcomes["float32"]
        rounded_outcome, rounded_scores = outcomes["bfloat16"]
        sequence_errors.extend(np.abs(exact_scores - rounded_scores).ravel().tolist())
        allocation_tv.append(
            0.5 * float(np.abs(exact_outcome.probabilities - rounded_outcome.probabilities).sum())
        )
        payment_errors.extend(np.abs(exact_outcome.payments - rounded_outcome.payments).tolist())
        payment_sizes.extend(np.abs(exact_outcome.payments).tolist())
        same_choice += int(exact_outcome.chosen_index == rounded_outcome.chosen_index)

    # Speed, each dtype: decode n=1 / n=8 and scoring, on the first instance's prompts.
    first = instances[0]
    speed_prompt = fp32.tokenize_chat(list(reference_messages(first.query)))
    timing: dict[str, dict[str, float]] = {}
    score_batch = [speed_prompt + reply for reply in replies]
    score_tokens = sum(len(reply) for reply in replies) + len(speed_prompt)
    for name, engine in engines.items():
        results = {}
        for n in (1, 8):
            options = SamplingOptions(n=n, max_tokens=args.max_tokens, seed=1, ignore_eos=True)
            engine.complete([speed_prompt], options)  # warm-up
            decode = functools.partial(engine.complete, [speed_prompt], options)
            results[f"decode_n{n}"] = median_time(decode, args.repeats)
        engine.score(score_batch[:2])
        results["score"] = median_time(functools.partial(engine.score, score_batch), args.repeats)
        timing[name] = results

    precision = []
    for label, values in (
        ("|Δ log-prob| per token (nats)", token_errors),
        ("|Δ log-prob| per reply (nats)", sequence_errors),
        ("allocation TV distance", allocation_tv),
        ("|Δ payment| (value units)", payment_errors),
        ("|payment| in fp32, for scale", payment_sizes),
    ):
        median, p90, worst = quantiles(values)
        precision.append([label, f"{median:.4f}", f"{p90:.4f}", f"{worst:.4f}"])
    precision.append(["same candidate chosen", f"{same_choice}/{len(instances)}", "", ""])
    rich_table(
        f"bf16 vs fp32, {args.model}, {len(instances)} instances x M={args.candidates}, "
        f"<= {args.max_tokens} tokens (CPU native bf16: {cpu_has_native_bf16()})",
        ["quantity", "median", "p90", "max"],
        precision,
    )
    labels = {
        "decode_n1": f"decode n=1, {args.max_tokens} tok",
        "decode_n8": f"decode n=8, {args.max_tokens} tok",
        "score": f"score {len(score_batch)} replies ({score_tokens} tok)",
    }
    speed = []
    for key, label in labels.items():
        a, b = timing["float32"][key], timing["bfloat16"][key]
        speed.append([label, f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}x"])
    rich_table(
        f"speed, {torch.get_num_threads()} threads, medians of {args.repeats}",
        ["case", "float32 (s)", "bfloat16 (s)", "speed-up"],
        speed,
    )
    decode_speedup = timing["float32"]["decode_n8"] / timing["bfloat16"]["decode_n8"]
    score_speedup = timing["float32"]["score"] / timing["bfloat16"]["score"]
    print(
        f"bf16_decode_speedup={decode_speedup:.2f} bf16_score_speedup={score_speedup:.2f} "
        f"token_abs_err_p50={quantiles(token_errors)[0]:.4f} "
        f"seq_abs_err_p50={quantiles(sequence_errors)[0]:.4f} "
        f"allocation_tv_p50={quantiles(allocation_tv)[0]:.4f} "
        f"payment_abs_err_p50={quantiles(payment_errors)[0]:.4f}"
    )


if __name__ == "__main__":
    main()
