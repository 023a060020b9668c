"""Exactness of the importance weights in each dtype: does log q (the sampled tokens' log-probs) equal
the teacher-forced score of the same reply, and do scores depend on what else is in the batch?

On the paper's instances (``../shared/data/instances.jsonl``), SmolLM2, in process (the worker's
engine), for the default dtype (bf16 on this CPU: the batch-invariant forward) and for fp32:

* ``context`` proposal: M candidates drawn under the context prompt (temperature 1, top-p 1); per
  reply |Σ sampled log-probs − score under the context prompt| (max and p99);
* ``reference`` proposal: M candidates drawn under the reference prompt; per candidate
  |log π_ref − log q| (must be 0: q = π_ref), and the auction's effective sample size over them
  (rewards from the advertiser prompts; a wrong log q distorts the weights and shrinks the ESS);
* batch invariance: every reference-prompt sequence scored alone vs inside the instance's full
  scoring request (all prompts x all candidates), max |Δ| over tokens;
* speed: wall time of each instance's generation + scoring, per dtype (bf16_speedup = fp32 / bf16).

    .venv/bin/python bench/numerics.py --limit 3          # quick
    .venv/bin/python bench/numerics.py                    # 40 instances, M=8, 64 tokens

Last line: ``logq_vs_score_max=<nats> reference_weight_max=<nats> batch_invariance_max=<nats>
bf16_speedup=<x>`` (the default dtype's figures).
"""

from __future__ import annotations

import argparse
import sys
import time
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
from bench.common import engine_config, rich_table  # noqa: E402
from workers.engine.core import Engine  # noqa: E402
from workers.engine.sampling import SamplingOptions  # noqa: E402
from workers.models import load_model, resolve_dtype  # noqa: E402

INSTANCES = REPO.parent / "shared" / "data" / "instances.jsonl"


def reply_sums(scores: list[list[float | None]], start: int) -> float:
    return float(sum(float(v) for v in scores[start:] if v is not None))


def run_instance(
    engine: Engine, instance: object, candidates: int, max_tokens: int, seed: int
) -> dict[str, list[float]]:
    inst: object = instance
    profiles = [
        AdvertiserProfile(name=a["name"], description=a["description"], instruction=a.get("instruction"))
        for a in inst.advertisers  # type: ignore[attr-defined]
    ]
    query = inst.query  # type: ignore[attr-defined]
    chats = [
        context_messages(query, profiles),
        reference_messages(query),
        *(advertiser_messages(query, p) for p in profiles),
    ]
    prompts = [engine.tokenize_chat(list(chat)) for chat in chats]
    out: dict[str, list[float]] = {"logq_vs_score": [], "reference_weight": [], "batch": [], "ess": []}
    started = time.perf_counter()
    for proposal, prompt_index in (("context", 0), ("reference", 1)):
        options = SamplingOptions(n=candidates, max_tokens=max_tokens, seed=seed, logprobs=0)
        samples = engine.complete([prompts[prompt_index]], options)[0].samples
        replies = [s.token_ids for s in samples]
        log_q = np.array([float(sum(s.logprobs)) for s in samples])
        sequences = [p + r for p in prompts for r in replies]
        scored = [s.token_logprobs for s in engine.score(sequences)]
        matrix = np.array(
            [
                reply_sums(sc, len(seq) - len(replies[k % candidates]))
                for k, (seq, sc) in enumerate(zip(sequences, scored, strict=True))
            ]
        ).reshape(len(prompts), candidates)
        gaps = np.abs(matrix[prompt_index] - log_q).tolist()
        if proposal == "context":
            out["logq_vs_score"] = gaps
            continue
        out["reference_weight"] = gaps
        log_ref, log_adv = matrix[1], matrix[2:]
        rewards = mechanism.rewards_from_logprobs(log_adv, log_ref, inst.value_scales)  # type: ignore[attr-defined]
        tau = mechanism.default_tau(len(profiles))
        outcome = mechanism.run_auction(rewards, log_ref, log_q, tau, np.random.default_rng(seed))
        out["ess"] = [outcome.effective_sample_size]
        out["seconds"] = [time.perf_counter() - started]
        for k in range(candidates):  # the reference sequences alone vs inside the full request
            seq = sequences[candidates + k]
            alone = engine.score([seq])[0].token_logprobs
            together = scored[candidates + k]
            out["batch"].append(
                max(
                    (
                        abs(a - b)
                        for a, b in zip(alone[1:], together[1:], strict=True)
                        if a is not None and b is not None
                    ),
                    default=0.0,
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--limit", type=int, default=40, help="instances (the paper's 40 by default)")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    default = resolve_dtype(torch.device("cpu"), "auto")
    dtypes = {"default": "auto", "float32": "float32"}
    instances = load_instances(INSTANCES, args.limit)
    results: dict[str, dict[str, list[float]]] = {}
    for label, dtype in dtypes.items():
        engine = Engine(load_model(args.model, "cpu", dtype), engine_config())
        merged: dict[str, list[float]] = {}
        for index, instance in enumerate(tqdm(instances, desc=f"{label} ({dtype})")):
            for key, values in run_instance(
                engine, instance, args.candidates, args.max_tokens, args.seed + index
            ).items():
                merged.setdefault(key, []).extend(values)
        results[label] = merged
        engine.close()
        del engine

    def stat(label: str, key: str, q: float | None = None) -> float:
        values = np.asarray(results[label][key], dtype=np.float64)
        return float(values.max() if q is None else np.quantile(values, q))

    rows = []
    for key, name in (
        ("logq_vs_score", "|Σ sampled − scored| per reply (nats)"),
        ("reference_weight", "|log π_ref − log q|, reference (nats)"),
        ("batch", "batch-invariance |Δ| per token (nats)"),
    ):
        rows.append([name, *(f"{stat(d, key):.3g} / {stat(d, key, 0.99):.3g}" for d in dtypes)])
    rows.append(
        ["ESS under reference, median (of M)", *(f"{np.median(results[d]['ess']):.2f}" for d in dtypes)]
    )
    rows.append(["ESS under reference, min", *(f"{min(results[d]['ess']):.2f}" for d in dtypes)])
    seconds = {d: float(np.median(results[d]["seconds"])) for d in dtypes}
    rows.append(["s per instance (median, gen+score x2)", *(f"{seconds[d]:.2f}" for d in dtypes)])
    rich_table(
        f"numerics, {args.model}, {len(instances)} instances x M={args.candidates}, "
        f"<= {args.max_tokens} tokens (default dtype {str(default).removeprefix('torch.')}; max / p99)",
        ["quantity", f"default ({str(default).removeprefix('torch.')})", "float32"],
        rows,
    )
    print(
        f"logq_vs_score_max={stat('default', 'logq_vs_score'):.3g} "
        f"reference_weight_max={stat('default', 'reference_weight'):.3g} "
        f"batch_invariance_max={stat('default', 'batch'):.3g} "
        f"bf16_speedup={seconds['float32'] / seconds['default']:.2f}"
    )


if __name__ == "__main__":
    main()
