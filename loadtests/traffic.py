"""The traffic of the load test, without locust: instances, auction requests and response checks.

Kept apart from locustfile.py so unit tests can import it (importing locust monkey-patches the
standard library with gevent).
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCES = Path("..") / "shared" / "data" / "instances.jsonl"

MAX_ADVERTISERS = 4
PAYMENT_TOLERANCE = 1e-6


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def resolve_instances_path(value: str | None = None) -> Path:
    """MOSAIC_INSTANCES (or the default) as an existing file: absolute, or relative to the current
    directory, then to the repository root; the default also tries shared/ inside the root."""
    raw = value if value is not None else os.environ.get("MOSAIC_INSTANCES", "").strip()
    candidates: list[Path] = []
    if raw:
        path = Path(raw).expanduser()
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
    else:
        candidates = [REPO_ROOT / DEFAULT_INSTANCES, REPO_ROOT / "shared" / "data" / "instances.jsonl"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"instances file not found (set MOSAIC_INSTANCES); tried: {tried}")


def load_instances(path: Path) -> list[dict[str, Any]]:
    instances: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record.get("query"), str) or not isinstance(record.get("advertisers"), list):
                raise ValueError(f"{path}:{number}: needs a 'query' string and an 'advertisers' list")
            advertisers = [
                {"id": str(a["id"]), "name": str(a["name"]), "description": str(a["description"])}
                for a in record["advertisers"]
            ]
            instances.append({"query": record["query"], "advertisers": advertisers})
    if not instances:
        raise ValueError(f"{path}: no instances")
    return instances


def build_auction(
    rng: random.Random,
    instances: list[dict[str, Any]],
    *,
    candidates: int,
    max_tokens: int,
    proposals: list[str],
) -> dict[str, Any]:
    """One auction request: a random instance with 1-4 advertisers (unique ids); when the instance has
    fewer than drawn, advertisers of other instances fill the rest."""
    index = rng.randrange(len(instances))
    instance = instances[index]
    wanted = rng.randint(1, MAX_ADVERTISERS)
    own = list(instance["advertisers"])
    rng.shuffle(own)
    chosen: list[dict[str, str]] = []
    seen: set[str] = set()
    for advertiser in own:
        if len(chosen) == wanted:
            break
        if advertiser["id"] not in seen:
            chosen.append(dict(advertiser))
            seen.add(advertiser["id"])
    if len(chosen) < wanted:
        others = [a for i, inst in enumerate(instances) if i != index for a in inst["advertisers"]]
        rng.shuffle(others)
        for advertiser in others:
            if len(chosen) == wanted:
                break
            if advertiser["id"] not in seen:
                chosen.append(dict(advertiser))
                seen.add(advertiser["id"])
    return {
        "query": instance["query"],
        "advertisers": chosen,
        "candidates": candidates,
        "max_tokens": max_tokens,
        "proposal": rng.choice(proposals),
        "seed": rng.randrange(2**31),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


AUCTION_FIELDS: dict[str, Any] = {
    "auction_id": str,
    "reply": str,
    "chosen_index": _is_int,
    "tau": _is_number,
    "proposal": str,
    "advertisers": list,
    "revenue": _is_number,
    "effective_sample_size": _is_number,
    "timings_ms": dict,
}
ADVERTISER_FIELDS: dict[str, Any] = {
    "id": str,
    "payment": _is_number,
    "expected_reward": _is_number,
    "expected_utility": _is_number,
}


def _check_fields(obj: Any, fields: dict[str, Any], where: str) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected an object, got {type(obj).__name__}"]
    problems = []
    for name, kind in fields.items():
        if name not in obj:
            problems.append(f"{where}: missing '{name}'")
            continue
        ok = isinstance(obj[name], kind) if isinstance(kind, type) else kind(obj[name])
        if not ok:
            problems.append(f"{where}.{name}: unexpected value {obj[name]!r}")
    return problems


def check_auction_response(body: Any, request: dict[str, Any]) -> list[str]:
    """Everything wrong with an auction response; [] when it is well-formed and consistent."""
    problems = _check_fields(body, AUCTION_FIELDS, "response")
    if problems:
        return problems
    if not body["auction_id"]:
        problems.append("response.auction_id is empty")
    if body["proposal"] != request["proposal"]:
        problems.append(f"response.proposal {body['proposal']!r} != requested {request['proposal']!r}")
    m = request["candidates"]
    if not 0 <= body["chosen_index"] < m:
        problems.append(f"response.chosen_index {body['chosen_index']} outside [0, {m})")
    if not 0 < body["effective_sample_size"] <= m + 1e-6:
        problems.append(f"response.effective_sample_size {body['effective_sample_size']} outside (0, {m}]")
    if body["tau"] <= 0:
        problems.append(f"response.tau {body['tau']} is not positive")
    for stage, value in body["timings_ms"].items():
        if not _is_number(value) or value < 0:
            problems.append(f"response.timings_ms.{stage}: {value!r}")
    for i, advertiser in enumerate(body["advertisers"]):
        problems += _check_fields(advertiser, ADVERTISER_FIELDS, f"response.advertisers[{i}]")
    if problems:
        return problems
    sent = sorted(a["id"] for a in request["advertisers"])
    got = sorted(a["id"] for a in body["advertisers"])
    if got != sent:
        problems.append(f"response advertisers {got} != requested {sent}")
    total = math.fsum(a["payment"] for a in body["advertisers"])
    if not math.isclose(total, body["revenue"], rel_tol=1e-9, abs_tol=PAYMENT_TOLERANCE):
        problems.append(f"payments sum to {total!r}, revenue is {body['revenue']!r}")
    return problems


def json_object(response: Any) -> tuple[dict[str, Any] | None, str | None]:
    try:
        body = response.json()
    except ValueError:
        return None, f"body is not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict):
        return None, f"body is not a JSON object: {body!r:.200}"
    return body, None


LEDGER_SUMMARY_FIELDS: dict[str, Any] = {
    "currency": str,
    "revenue_micro": _is_int,
    "revenue": str,
    "events_applied": _is_int,
    "conflicts": _is_int,
    "dead_letters": _is_int,
    "stream_length": _is_int,
    "pending": _is_int,
}
LEDGER_ADVERTISER_FIELDS: dict[str, Any] = {
    "advertiser_id": str,
    "currency": str,
    "balance_micro": _is_int,
    "paid_micro": _is_int,
    "auctions": _is_int,
    "history": list,
}


def check_ledger_summary(body: Any, baseline: dict[str, int] | None = None) -> list[str]:
    """Schema of GET /ledger/summary; with a baseline (the first summary seen), conflicts and dead
    letters must not have grown since: the run itself produced none."""
    problems = _check_fields(body, LEDGER_SUMMARY_FIELDS, "summary")
    if problems or baseline is None:
        return problems
    for counter in ("conflicts", "dead_letters"):
        if body[counter] > baseline.get(counter, body[counter]):
            problems.append(
                f"summary.{counter} grew from {baseline[counter]} to {body[counter]} during the run"
            )
    return problems


def check_ledger_advertiser(body: Any, advertiser_id: str) -> list[str]:
    """Schema of GET /ledger/advertisers/{id} and its own consistency."""
    problems = _check_fields(body, LEDGER_ADVERTISER_FIELDS, "advertiser")
    if problems:
        return problems
    if body["advertiser_id"] != advertiser_id:
        problems.append(f"advertiser_id {body['advertiser_id']!r} != requested {advertiser_id!r}")
    if body["paid_micro"] != -body["balance_micro"]:
        problems.append(f"paid_micro {body['paid_micro']} != -balance_micro {body['balance_micro']}")
    if body["auctions"] < 0:
        problems.append(f"auctions {body['auctions']} is negative")
    return problems
