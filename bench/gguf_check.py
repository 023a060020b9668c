"""Is the de-quantised Gemma 3 270M the model in the GGUF? Two checks (issue 39):

1. **Every tensor** of the worker's cache (``workers.convert``, fp32 safetensors) against the GGUF's own
   tensor, de-quantised by the ``gguf`` package (Q4_K, Q5_0, Q6_K, Q8_0, F32) and mapped to the Hugging
   Face name (Gemma's RMSNorm weights are stored as 1 + w). Expected: equal bit for bit (the same
   de-quantisation), so this checks names, shapes, layouts and the norm offset of all 236 tensors.
2. **llama.cpp's reading of the same file** (llama-cpp-python, an independent C implementation of the
   de-quantisation and the forward): full logits of the worker's model (fp32, transformers' forward)
   against llama.cpp's (``logits_all``) on a few prompts, position by position: the next token's
   log-probability, the top-1 token and the whole distribution (KL). llama.cpp multiplies the
   quantised weights with activations quantised to 8 bits (Q8_K/Q8_0), so the two differ by that
   rounding: TOLERANCE says how much is allowed, and the same comparison on SmolLM2 (whose conversion
   every other figure of this project rests on) shows what that rounding gives for a model known to
   be right. A control run with one tensor broken (the final norm without its +1 offset, the mistake a
   wrong mapping makes) shows the check would catch it.

llama-cpp-python must be built without AMX on this machine (its Xeon reports AMX, the sandbox faults on
the tile instructions: SIGILL/SIGSEGV in ``ggml_backend_amx_mul_mat``): ``CMAKE_ARGS="-DGGML_NATIVE=OFF
-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install llama-cpp-python==0.3.36`` (AVX2 kernels).

    .venv/bin/python bench/gguf_check.py                      # writes docs/results/gguf_check.txt

Needs ``llama-cpp-python`` (a bench extra, built from source: ``pip install llama-cpp-python``);
without it only check 1 runs. Last line: ``tensors=<n> tensor_max_diff=<x> next_token_logprob_max=<nats>
next_token_logprob_p99=<nats> top1_agreement=<share> kl_max=<nats> control_next_token_max=<nats>``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import load_file

from workers.convert import ensure_gemma3_converted, gemma3_gguf_path, smollm2_gguf_path
from workers.models import load_model

# Allowed llama.cpp vs transformers differences (llama.cpp rounds activations to 8 bits per block);
# SmolLM2's own figures (mean 0.014, p99 0.198, max 0.469 nats, top-1 0.988) are within it.
TOLERANCE = {"next_token_logprob_p99": 0.25, "next_token_logprob_max": 1.0, "top1_agreement": 0.97}
PROMPTS = [
    "You are a helpful assistant.\n\nUser: What is the capital of France?\nAssistant:",
    "Answer the question advertising Acme Bikes, a shop selling bicycles and helmets.\n\n"
    "User: How can I get fitter this year?\nAssistant:",
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 60) + " What did the fox do?",
]
_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    """The Hugging Face parameter a GGUF tensor is."""
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if gguf_name in fixed:
        return fixed[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if match is None or match.group(2) not in _BLOCK:
        raise KeyError(f"unmapped GGUF tensor {gguf_name}")
    return f"model.layers.{match.group(1)}.{_BLOCK[match.group(2)]}.weight"


def check_tensors(gguf: Path, converted: Path) -> tuple[int, float, dict[str, int]]:
    """(tensors compared, largest |difference|, count per quantisation type)."""
    reader = GGUFReader(gguf)
    ours = load_file(str(converted / "model.safetensors"))
    worst, kinds = 0.0, {}
    for tensor in reader.tensors:
        reference = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        reference = reference.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        if tensor.name.endswith("norm.weight"):
            reference = reference - 1.0  # Gemma's RMSNorm scales by (1 + w); the GGUF stores 1 + w
        mine = ours[hf_name(tensor.name)].float().numpy()
        if mine.shape != reference.shape:
            raise AssertionError(f"{tensor.name}: shape {mine.shape} vs the GGUF's {reference.shape}")
        worst = max(worst, float(np.max(np.abs(mine - reference))))
        kinds[tensor.tensor_type.name] = kinds.get(tensor.tensor_type.name, 0) + 1
    return len(reader.tensors), worst, kinds


@dataclass
class LogitStats:
    positions: int
    next_token_max: float
    next_token_p99: float
    next_token_mean: float
    top1_agreement: float
    kl_max: float


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def compare_logits(ours: list[np.ndarray], theirs: list[np.ndarray], ids: list[list[int]]) -> LogitStats:
    """Position-wise comparison of two models' logits [T, V] over the same token ids."""
    deltas, agree, kls = [], [], []
    for a, b, seq in zip(ours, theirs, ids, strict=True):
        la, lb = _log_softmax(a.astype(np.float64)), _log_softmax(b.astype(np.float64))
        nxt = np.asarray(seq[1:])
        rows = np.arange(len(nxt))
        deltas += list(np.abs(la[rows, nxt] - lb[rows, nxt]))
        agree += list(la.argmax(-1) == lb.argmax(-1))
        kls += list((np.exp(la) * (la - lb)).sum(-1))
    d = np.asarray(deltas)
    return LogitStats(
        len(agree),
        float(d.max()),
        float(np.quantile(d, 0.99)),
        float(d.mean()),
        float(np.mean(agree)),
        float(max(kls)),
    )


def _past(items: list[Any], start: int) -> list[Any]:
    """The long prompts' positions from ``start`` on (logits rows or token ids)."""
    return [x[start:] for x in items if len(x) > start + 1]


def transformers_logits(model: torch.nn.Module, ids: list[list[int]]) -> list[np.ndarray]:
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([seq])).logits[0].float().numpy() for seq in ids]


def llama_cpp_logits(gguf: Path, ids: list[list[int]], threads: int) -> list[np.ndarray]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf), n_ctx=2048, logits_all=True, n_threads=threads, n_batch=2048, verbose=False
    )
    out = []
    for seq in ids:
        llm.reset()
        llm.eval(seq)
        out.append(np.array(llm.scores[: len(seq)], dtype=np.float32))
    return out


def _model_vs_llama_cpp(name: str, gguf: Path, threads: int) -> tuple[LogitStats, LogitStats]:
    """One model's comparison over PROMPTS, and the same restricted to positions past 512 tokens."""
    loaded = load_model(name, "cpu", "float32")
    ids = [loaded.tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    ours, theirs = transformers_logits(loaded.model, ids), llama_cpp_logits(gguf, ids, threads)
    window = compare_logits(_past(ours, 512), _past(theirs, 512), _past(ids, 512))
    return compare_logits(ours, theirs, ids), window


def _control(gguf: Path, threads: int) -> LogitStats:
    """Gemma with its final norm missing the +1 offset (one tensor wrong) against llama.cpp."""
    loaded = load_model("gemma3-270m", "cpu", "float32")
    with torch.no_grad():
        loaded.model.model.norm.weight.add_(1.0)
    ids = [loaded.tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    return compare_logits(transformers_logits(loaded.model, ids), llama_cpp_logits(gguf, ids, threads), ids)


def check_llama_cpp(gguf: Path, threads: int) -> tuple[list[str], str, bool]:
    """Check 2's report lines, summary fields and verdict."""
    import llama_cpp

    stats, window = _model_vs_llama_cpp("gemma3-270m", gguf, threads)
    smol, _ = _model_vs_llama_cpp("smollm2", smollm2_gguf_path(), threads)
    control = _control(gguf, threads)
    passed = (
        stats.next_token_p99 <= TOLERANCE["next_token_logprob_p99"]
        and stats.next_token_max <= TOLERANCE["next_token_logprob_max"]
        and stats.top1_agreement >= TOLERANCE["top1_agreement"]
        and not math.isnan(stats.next_token_max)
    )
    lines = [
        f"check 2: llama-cpp-python {llama_cpp.__version__} (AVX2 build), {len(PROMPTS)} prompts, "
        f"{stats.positions} positions; fp32 transformers vs llama.cpp (CPU, 8-bit activations)",
        f"  |Δ log p(next token)|: mean {stats.next_token_mean:.4f}, p99 {stats.next_token_p99:.4f}, "
        f"max {stats.next_token_max:.4f} nats; top-1 agreement {stats.top1_agreement:.4f}; "
        f"max KL {stats.kl_max:.4f} nats",
        f"  of which past the 512-token sliding window ({window.positions} positions): mean "
        f"{window.next_token_mean:.4f}, max {window.next_token_max:.4f} nats",
        f"  tolerance {TOLERANCE}: {'PASS' if passed else 'FAIL'}",
        f"  the same on SmolLM2 (Q4_1, the trusted conversion): mean {smol.next_token_mean:.4f}, p99 "
        f"{smol.next_token_p99:.4f}, max {smol.next_token_max:.4f} nats; top-1 agreement "
        f"{smol.top1_agreement:.4f}; max KL {smol.kl_max:.4f} nats",
        f"  control (final norm without its +1 offset): max |Δ log p| {control.next_token_max:.2f} nats, "
        f"top-1 agreement {control.top1_agreement:.3f}",
    ]
    summary = (
        f" next_token_logprob_max={stats.next_token_max:.4f} next_token_logprob_p99="
        f"{stats.next_token_p99:.4f} top1_agreement={stats.top1_agreement:.4f} kl_max={stats.kl_max:.4f}"
        f" smollm2_next_token_logprob_p99={smol.next_token_p99:.4f} control_next_token_max="
        f"{control.next_token_max:.2f}"
    )
    return lines, summary, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/gguf_check.txt"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    converted, gguf = ensure_gemma3_converted(), gemma3_gguf_path()
    count, tensor_diff, kinds = check_tensors(gguf, converted)
    lines = [
        f"GGUF {gguf.name}; cache {converted.name}",
        f"check 1: {count} tensors ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}) against "
        f"the gguf package's de-quantisation: largest |difference| {tensor_diff:g}",
    ]
    summary = f"tensors={count} tensor_max_diff={tensor_diff:g}"
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        lines.append("check 2 skipped: llama-cpp-python is not installed")
        passed = True
    else:
        more, extra, passed = check_llama_cpp(gguf, args.threads)
        lines += more
        summary += extra
    lines.append(summary)
    if not passed:
        print("\n".join(lines))
        return 1
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
