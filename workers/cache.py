"""The machine-wide cache of MOSAIC (``$MOSAIC_CACHE_DIR``, default ``~/.cache/mosaic``): what is in
it, how its keys are made, and ``mosaic cache clean``.

Entries: ``smollm2-<format>-<size>-<sha256 of the GGUF>`` (the de-quantised SmolLM2 of
``workers.convert``, ~520 MB), ``gemma3-270m-<format>-<sha256>`` (the de-quantised Gemma 3 270M,
~1.1 GB) with ``gemma3-270m-gguf-<sha256>`` (its GGUF as assembled from the chunk packages, ~250 MB),
``vllm-<version>`` (the contract test's side venv, ``tests/contract/vllm_venv.py``) and
``minilm-<sha256 of the model.zip>`` (the gateway's campaign selection embedder,
``app.selection.embedder``, ~90 MB). Invariant: **one copy per machine** — the keys are the files'
*content* hashes (Gemma's: the pinned one), so every virtualenv that installs the same wheel finds the
same conversion (an mtime key made one copy per venv). The hash of a GGUF is memoised by (path, size,
mtime) in ``.content-hashes.json``, so a start reads the file only once.
Standard library only (no torch: ``mosaic cache`` stays fast).
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

ENTRY_PREFIXES = ("smollm2-", "gemma3-270m-", "vllm-", "minilm-")
_MEMO = ".content-hashes.json"


def cache_root() -> Path:
    env = os.environ.get("MOSAIC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mosaic"


def content_hash(path: Path) -> str:
    """sha256 of ``path``'s bytes (hex), memoised by path, size and mtime under the cache root."""
    stat = path.stat()
    memo_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_root() / _MEMO
    memo: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        memo = dict(json.loads(memo_path.read_text()))
    if memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    memo[memo_key] = value
    with contextlib.suppress(OSError):
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=memo_path.parent, prefix=f"{_MEMO}.")
        with os.fdopen(fd, "w") as handle:
            json.dump(memo, handle)
        os.replace(tmp, memo_path)
    return value


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def entries(root: Path | None = None) -> list[tuple[Path, int]]:
    """The cache's entries (and leftovers of interrupted writes) with their sizes in bytes."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    found = [
        p
        for p in sorted(root.iterdir())
        if p.name.startswith(ENTRY_PREFIXES)
        or p.name.startswith(tuple(f".{x}" for x in ENTRY_PREFIXES))
        or p.name == _MEMO
    ]
    return [(p, _size(p)) for p in found]


def clean(root: Path | None = None) -> int:
    """Remove every entry of the cache (nothing else under the root); returns the bytes freed."""
    freed = 0
    for path, size in entries(root):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        freed += size
    return freed
