"""The instance file of `mosaic evaluate`: one query and its advertisers per JSONL line.

`load_instances` reads and validates it into `Instance` records (advertiser ids default to a slug of
the name); `slug` is also the cache's file-name sanitiser. Imports the standard library and numpy only.
See docs/DESIGN.md § Layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Instance:
    id: str
    query: str
    # AdvertiserIn fields: id, name, description, instruction?, value_scale?
    advertisers: list[dict[str, Any]]

    @property
    def names(self) -> list[str]:
        return [str(a["name"]) for a in self.advertisers]

    @property
    def value_scales(self) -> np.ndarray:
        return np.array([float(a.get("value_scale", 1.0)) for a in self.advertisers], dtype=np.float64)


def load_instances(path: Path, limit: int | None = None) -> list[Instance]:
    """Read a JSONL of ``{id?, query, advertisers: [{id?, name, description, ...}]}``; first ``limit``."""
    instances: list[Instance] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                advertisers = []
                for index, advertiser in enumerate(raw["advertisers"]):
                    entry = {
                        key: advertiser[key]
                        for key in ("id", "name", "description", "instruction", "value_scale")
                        if key in advertiser and advertiser[key] is not None
                    }
                    entry.setdefault("id", slug(str(advertiser["name"])) or f"advertiser-{index}")
                    advertisers.append(entry)
                instance = Instance(
                    id=str(raw.get("id", line_number)), query=str(raw["query"]), advertisers=advertisers
                )
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{line_number}: not an instance ({error})") from error
            instances.append(instance)
            if limit is not None and len(instances) >= limit:
                break
    if not instances:
        raise ValueError(f"{path}: no instances")
    ids = [instance.id for instance in instances]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: instance ids must be unique")
    return instances


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-.")[:64]
