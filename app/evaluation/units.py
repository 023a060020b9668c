"""One unit of `mosaic evaluate` and its cache entry: the scored candidates of (instance, seed, proposal).

`UnitSpec` names a unit (and derives its auction seed), `UnitData` is what the cache holds for it,
`unit_config` is everything the candidates depend on except M (a cached unit is reused only if it
matches), and `cache_path` / `read_cached_unit` / `write_cached_unit` keep it as JSON under
``out/cache`` (atomic writes, so an interrupted run is resumable). Imports `instances` and
`app.auction.engine_client.derive_seed`.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.auction.engine_client import derive_seed
from app.evaluation.instances import Instance, slug

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class UnitSpec:
    instance: Instance
    seed: int
    proposal: str

    @property
    def unit_seed(self) -> int:
        """The auction seed of this (instance, seed): the same for every proposal."""
        return derive_seed(self.seed, zlib.crc32(self.instance.id.encode("utf-8")))


@dataclass
class UnitData:
    """The scored candidates of one unit (what the cache holds)."""

    instance_id: str
    seed: int
    proposal: str
    unit_seed: int
    config: dict[str, Any]
    collect_seconds: float
    texts: list[str]
    num_tokens: list[int]
    finish_reasons: list[str | None]
    sources: list[str]
    log_ref: np.ndarray  # (M,)
    log_advertisers: np.ndarray  # (n, M)
    log_proposal: np.ndarray  # (M,)
    log_context: np.ndarray | None  # (M,) for the mixture
    model_name: str | None = None

    @property
    def num_candidates(self) -> int:
        return len(self.texts)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "instance_id": self.instance_id,
            "seed": self.seed,
            "proposal": self.proposal,
            "unit_seed": self.unit_seed,
            "config": self.config,
            "collect_seconds": self.collect_seconds,
            "model_name": self.model_name,
            "texts": self.texts,
            "num_tokens": self.num_tokens,
            "finish_reasons": self.finish_reasons,
            "sources": self.sources,
            "log_ref": self.log_ref.tolist(),
            "log_advertisers": self.log_advertisers.tolist(),
            "log_proposal": self.log_proposal.tolist(),
            "log_context": None if self.log_context is None else self.log_context.tolist(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> UnitData:
        if raw.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {raw.get('format')!r} is not {CACHE_FORMAT}")
        log_context = raw["log_context"]
        data = cls(
            instance_id=str(raw["instance_id"]),
            seed=int(raw["seed"]),
            proposal=str(raw["proposal"]),
            unit_seed=int(raw["unit_seed"]),
            config=dict(raw["config"]),
            collect_seconds=float(raw["collect_seconds"]),
            model_name=raw.get("model_name"),
            texts=[str(text) for text in raw["texts"]],
            num_tokens=[int(count) for count in raw["num_tokens"]],
            finish_reasons=list(raw["finish_reasons"]),
            sources=[str(source) for source in raw["sources"]],
            log_ref=np.asarray(raw["log_ref"], dtype=np.float64),
            log_advertisers=np.asarray(raw["log_advertisers"], dtype=np.float64),
            log_proposal=np.asarray(raw["log_proposal"], dtype=np.float64),
            log_context=None if log_context is None else np.asarray(log_context, dtype=np.float64),
        )
        m = data.num_candidates
        shapes_ok = (
            len(data.num_tokens) == m
            and len(data.finish_reasons) == m
            and len(data.sources) == m
            and data.log_ref.shape == (m,)
            and data.log_proposal.shape == (m,)
            and data.log_advertisers.ndim == 2
            and data.log_advertisers.shape[1] == m
            and (data.log_context is None or data.log_context.shape == (m,))
        )
        if not shapes_ok:
            raise ValueError("cache entry has inconsistent shapes")
        return data


def unit_config(
    spec: UnitSpec, *, max_tokens: int, engine_tag: str, temperature: float, top_p: float, share: float
) -> dict[str, Any]:
    """Everything the candidates depend on except M: a cached unit is reused only if this matches."""
    config: dict[str, Any] = {
        "query": spec.instance.query,
        "advertisers": spec.instance.advertisers,
        "max_tokens": max_tokens,
        "engine": engine_tag,
        "temperature": temperature,
        "top_p": top_p,
    }
    if spec.proposal == "mixture":
        config["mixture_context_share"] = share
    return config


def cache_path(out: Path, spec: UnitSpec) -> Path:
    safe = slug(spec.instance.id)
    if safe != spec.instance.id:
        safe = f"{safe}-{zlib.crc32(spec.instance.id.encode('utf-8')):08x}"
    return out / "cache" / f"instance-{safe}" / f"seed{spec.seed}-{spec.proposal}.json"


def read_cached_unit(path: Path, config: dict[str, Any], num_candidates: int) -> UnitData | None:
    """The cached unit if it exists, parses, matches ``config`` and holds at least ``num_candidates``."""
    if not path.exists():
        return None
    try:
        data = UnitData.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring unreadable cache entry %s: %s", path, error)
        return None
    # JSON round trip, so that tuples and lists compare equal.
    if json.loads(json.dumps(config)) != data.config or data.num_candidates < num_candidates:
        return None
    return data


def write_cached_unit(path: Path, data: UnitData) -> None:
    """Atomic write (temporary file + rename): an interrupted run never leaves a half-written entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data.to_json()), encoding="utf-8")
    os.replace(temporary, path)
