"""The Redis sizes of k8s/redis.yaml and docker-compose.yml follow the memory formula (DEPLOY.md § Redis
memory) at the stated rate, SIZING_AUCTIONS_PER_S of the k8s ConfigMap and the compose gateway."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.gateway.app import memory_budget_bytes
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Redis' kb/mb/gb are powers of 1024, as are Kubernetes' Mi/Gi and Docker's m/g.
UNITS = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "Mi": 1 << 20, "Gi": 1 << 30, "m": 1 << 20}
UNITS["g"] = 1 << 30


def _bytes(text: str) -> float:
    for suffix in sorted(UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * UNITS[suffix]
    return float(text)


def _k8s() -> tuple[Settings, float, float]:
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "redis.yaml").read_text()))
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["redis.conf"]
    maxmemory = _bytes(next(line.split()[1] for line in conf.splitlines() if line.startswith("maxmemory ")))
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    limit = _bytes(statefulset["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    env = yaml.safe_load((ROOT / "k8s" / "configmap.yaml").read_text())["data"]
    names = ("AUDIT_TTL_S", "BILLING_RETENTION_S", "SIZING_AUCTIONS_PER_S", "AUDIT_BYTES_PER_AUCTION")
    settings = Settings(**{name.lower(): env[name] for name in names if name in env})
    return settings, maxmemory, limit


def test_k8s_redis_maxmemory_follows_the_formula() -> None:
    settings, maxmemory, limit = _k8s()
    assert settings.sizing_auctions_per_s == 0.2  # the rate DEPLOY.md states
    assert maxmemory >= 1.25 * memory_budget_bytes(settings) + settings.redis_min_free_bytes
    assert maxmemory <= 2 * memory_budget_bytes(settings)  # not oversized by more than 2x either
    assert limit >= 1.5 * maxmemory


def test_compose_redis_maxmemory_is_the_k8s_one() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    argv = [str(a) for a in redis["command"]]
    maxmemory = _bytes(argv[argv.index("--maxmemory") + 1])
    assert maxmemory == _k8s()[1]
    assert _bytes(redis["deploy"]["resources"]["limits"]["memory"]) >= 1.5 * maxmemory
    assert compose["x-gateway-env"]["SIZING_AUCTIONS_PER_S"] == "0.2"
