"""The worker's engine identity: everything the bits of its log-probs depend on (issue 35).

``engine_identity(engine)`` → a JSON object: the model (``model``: its name; ``weights_sha256``: the
content hash of its weights at the precision they were stored in, so a bf16 and an fp32 worker of
one model share it), the code build (this package's version, the git commit when the source tree has
one or ``MOSAIC_GIT_COMMIT``, torch and transformers), ``dtype`` and ``device``, the kernel settings
that change bits (torch threads, the decode path; on the batch-invariant CPU path the calibrated tile
plans of its products, elsewhere the scoring token budget and prefix sharing, which cut the batch)
and the hardware class (CPU vendor, family, model and the ISA flags that change kernels; GPU name and
compute capability). ``identity_id(identity)`` is its digest (SHA-256 of its canonical JSON, RFC
8785): two workers with one id give the same log-probs bit for bit (docs/DESIGN.md § Exact,
batch-invariant log-probs; § Verifiable auctions).

Served vLLM-compatibly: ``GET /version`` answers vLLM's ``{"version": ...}`` plus ``mosaic_engine``
(the identity) and ``mosaic_engine_id``, and every answer carries the header ``X-Mosaic-Engine: <id>``
so the gateway knows which engine scored what. Imports torch, transformers, rfc8785,
:mod:`workers.engine.core` (the engine's type) and :mod:`workers.engine.tiling`; never ``app``.
See docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import rfc8785
import torch
import transformers

from workers.engine import tiling
from workers.engine.core import Engine
from workers.protocol import ENGINE_HEADER

__all__ = ["ENGINE_HEADER", "engine_identity", "identity_id"]

PACKAGE = "mosaic-auction"
# The CPU features that select other kernels (oneDNN / ATen dispatch), hence other bits.
KERNEL_ISA_FLAGS = (
    *("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
    *("avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16"),
)
# What a re-score must match exactly to call a worker "the announced model".
MODEL_FIELDS = ("model", "weights_sha256")
_REPO = Path(__file__).resolve().parent.parent


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare tree
        return "unknown"


def git_commit() -> str | None:
    """``MOSAIC_GIT_COMMIT``, else the source tree's HEAD (``+dirty`` with uncommitted changes to
    tracked files), else None (an installed wheel without its tree)."""
    pinned = os.environ.get("MOSAIC_GIT_COMMIT")
    if pinned:
        return pinned
    if not (_REPO / ".git").exists():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = _git("rev-parse", "HEAD").strip()
        status = _git("status", "--porcelain", "--untracked-files=no")
        return head + ("+dirty" if status.strip() else "")
    return None


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10, check=True
    ).stdout


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


def cpu_class() -> dict[str, Any]:
    """Vendor, family / model / name and the kernel-selecting ISA flags of this CPU."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "arch": platform.machine(),
        "vendor": info.get("vendor_id", ""),
        "family": info.get("cpu family", ""),
        "model": info.get("model", ""),
        "name": info.get("model name", platform.processor()),
        "isa": sorted(flags.intersection(KERNEL_ISA_FLAGS)),
        "torch_capability": _torch_cpu_capability(),
    }


def _torch_cpu_capability() -> str:
    with contextlib.suppress(AttributeError, RuntimeError):
        return str(torch.backends.cpu.get_cpu_capability())
    return ""


def gpu_class(device: torch.device) -> dict[str, Any] | None:
    """The GPU's name and compute capability, with the CUDA and cuDNN versions (None on CPU)."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "name": torch.cuda.get_device_name(device),
        "capability": f"{major}.{minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def kernel_settings(engine: Engine) -> dict[str, Any]:
    """The settings that choose kernels or batch shapes: threads, decode path, tile plans."""
    config = engine.config
    settings: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "path": "invariant" if engine.invariant is not None else "transformers",
        "decode": engine.decode_mode,
        "force_ignore_eos": config.force_ignore_eos,
    }
    if engine.invariant is not None:  # rows' bits depend on the tile plans, not on the batch
        plans = sorted(tiling.calibrated_plans().items(), key=lambda item: item[0][:2])
        settings["tile_plans"] = {
            f"{n}x{k}{'+bias' if bias else ''}": f"{plan.min_rows}..{plan.max_rows}"
            for (n, k, _, bias), plan in plans
        }
    else:  # elsewhere how the batch is cut and padded changes bits (to float noise)
        settings["score_token_budget"] = config.score_token_budget
        settings["prefix_sharing"] = config.prefix_sharing
    return settings


def engine_identity(engine: Engine) -> dict[str, Any]:
    """What bit-identity of this worker's log-probs depends on (see the module docs)."""
    hardware: dict[str, Any] = {"cpu": cpu_class()}
    gpu = gpu_class(engine.device)
    if gpu is not None:
        hardware["gpu"] = gpu
    return {
        "model": engine.name,
        "weights_sha256": engine.loaded.weights_sha256,
        "build": {
            "mosaic": package_version(),
            "git_commit": git_commit(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "dtype": str(engine.loaded.dtype).removeprefix("torch."),
        "device": engine.device.type,
        "kernels": kernel_settings(engine),
        "hardware": hardware,
    }


def identity_id(identity: dict[str, Any]) -> str:
    """SHA-256 (hex) of the identity's RFC 8785 canonical JSON."""
    return hashlib.sha256(rfc8785.dumps(identity)).hexdigest()
