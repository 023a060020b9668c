"""Faults as an SRE would try them (issue 15): a hung worker, a killed or full Redis, half-open clients.

Usage: ``python bench/faults.py [--repo PATH] [--scenarios hung,redis-kill,redis-full,half-open,memory]``.
``--repo`` runs the service from another checkout (a clone of main: the "before" figures); by default
this one. Everything is real processes on loopback (tiny-random workers, ``mosaic serve``, redis-server)
under a bounded load of 8 clients:

* hung: two workers, one SIGSTOPped for ``--hung-s``: auctions completed meanwhile, the longest time
  without a completed auction, p99 latency vs normal, time until the gateway ejects the worker
  (mosaic_worker_up 0), the slowest /readyz;
* redis-kill: the embedded Redis under ``mosaic serve`` SIGKILLed: seconds until the next 200,
  /healthz;
* redis-full: a Redis at its ``maxmemory`` (noeviction): status and latency of POST /auction, whether
  model work was done (generate-stage count), /readyz;
* half-open: 1,550 connections that send half a request head: still open after ``--half-open-wait-s``,
  the gateway's file descriptors;
* memory: Redis bytes per auction (M=8, 64 tokens), stream length and markers before/after the
  retention (BILLING_RETENTION_S=25 s here).

Each scenario ends with ``mosaic ledger reconcile`` (billing invariants: every 200 billed once, nothing
for a failure). Prints a table; the last line holds ``name=value`` pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentile, text_table
from bench.faults_stack import BODY, Load, Result, Stack, fd_count, metric, model_tokens, timed_get

Figures = dict[str, str]


def _billing(stack: Stack, load: Load, env: dict[str, str], figures: Figures, prefix: str) -> None:
    ok_ids = {r.auction_id for r in load.results if r.status == 200}
    time.sleep(3)  # the consumer applies the last events
    clean, applied = stack.reconcile(env)
    figures[f"{prefix}_served"] = str(len(ok_ids))
    figures[f"{prefix}_failed"] = str(sum(r.status != 200 for r in load.results))
    figures[f"{prefix}_applied"] = applied
    figures[f"{prefix}_reconcile_clean"] = str(clean and applied == str(len(ok_ids)))


def hung(stack: Stack, args: argparse.Namespace, figures: Figures) -> None:
    (w1, p1), (w2, _) = stack.worker(), stack.worker()
    gateway, _, env = stack.gateway([w1, w2], {})
    load = Load(gateway, args.clients).start()
    time.sleep(args.warmup_s)
    stopped = time.monotonic()
    os.kill(p1.pid, signal.SIGSTOP)
    detected, readyz = None, []
    while time.monotonic() - stopped < args.hung_s:
        readyz.append(timed_get(gateway + "/readyz"))
        if detected is None and metric(gateway, "mosaic_worker_up", f'worker="{w1}"') == 0:
            detected = time.monotonic() - stopped
        time.sleep(0.25)
    os.kill(p1.pid, signal.SIGCONT)
    load.stop()
    results = load.results
    normal = [r.ended - r.started for r in results if r.ended < stopped and r.status == 200] or [0.0]
    during = [r for r in results if stopped <= r.started < stopped + args.hung_s]
    ends = sorted(r.ended for r in results if stopped <= r.ended <= stopped + args.hung_s and r.status == 200)
    gaps = [b - a for a, b in zip([stopped, *ends], [*ends, stopped + args.hung_s], strict=True)]
    figures["hung_normal_p50_s"] = f"{statistics.median(normal):.3f}"
    figures["hung_normal_p99_s"] = f"{percentile(normal, 0.99):.3f}"
    figures["hung_completed"] = str(len(ends))
    figures["hung_longest_gap_s"] = f"{max(gaps):.1f}"
    latencies = [r.ended - r.started for r in during] or [float("nan")]
    figures["hung_p99_s"] = f"{percentile(latencies, 0.99):.3f}"
    figures["hung_detection_s"] = f"{detected:.2f}" if detected is not None else "none"
    figures["hung_readyz_max_s"] = f"{max(s for _, s in readyz):.2f}"
    figures["hung_readyz_status"] = "/".join(sorted({str(c) for c, _ in readyz}))
    _billing(stack, load, env, figures, "hung")


def redis_kill(stack: Stack, args: argparse.Namespace, figures: Figures) -> None:
    import redis

    (worker, _) = stack.worker()
    gateway, _, env = stack.gateway([worker], {})
    url = (Path(env["DATA_DIR"]) / "redis.url").read_text().strip()
    pid = int(redis.Redis.from_url(url).info("server")["process_id"])
    load = Load(gateway, args.clients).start()
    time.sleep(args.warmup_s)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    healthz = []
    while time.monotonic() - killed < args.observe_s:
        healthz.append(timed_get(gateway + "/healthz")[0])
        time.sleep(0.25)
    load.stop()
    after = sorted(r.ended for r in load.results if r.status == 200 and r.started > killed)
    figures["redis_kill_back_after_s"] = f"{after[0] - killed:.2f}" if after else f">{args.observe_s:.0f}"
    figures["redis_kill_failed_after_kill"] = str(
        sum(r.status != 200 for r in load.results if r.ended > killed)
    )
    figures["redis_kill_healthz"] = "/".join(sorted({str(c) for c in healthz}))
    _billing(stack, load, env, figures, "redis_kill")


def redis_full(stack: Stack, args: argparse.Namespace, figures: Figures) -> None:
    import httpx
    import redis

    url, _ = stack.redis("--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    (worker, _) = stack.worker()
    gateway, _, env = stack.gateway([worker], {"REDIS_URL": url})
    load = Load(gateway, 1)
    with httpx.Client(base_url=gateway, timeout=120) as client:

        def post() -> int:
            started = time.monotonic()
            response = client.post("/auction", json=BODY)
            answer = response.json()
            load.results.append(Result(started, time.monotonic(), response.status_code))
            load.results[-1].auction_id = str(answer.get("auction_id", ""))
            load.results[-1].detail = str(answer.get("detail", ""))
            return response.status_code

        for _ in range(5):
            post()
        client_redis = redis.Redis.from_url(url)
        with contextlib.suppress(redis.ResponseError):
            for i in range(10_000):
                client_redis.set(f"junk:{i}", b"x" * 65536)
        time.sleep(1.5)
        tokens = model_tokens(worker)
        times, statuses, detail = [], set(), ""
        for _ in range(20):
            started = time.monotonic()
            statuses.add(post())
            times.append(time.monotonic() - started)
            detail = load.results[-1].detail or detail
        figures["full_status"] = "/".join(sorted(map(str, statuses)))
        figures["full_median_ms"] = f"{statistics.median(times) * 1000:.1f}"
        figures["full_max_ms"] = f"{max(times) * 1000:.1f}"
        figures["full_model_tokens"] = str(int(model_tokens(worker) - tokens))  # worker tokens meanwhile
        figures["full_readyz"] = str(timed_get(gateway + "/readyz")[0])
        figures["full_detail"] = repr(str(detail)[:60])
        client_redis.delete(*[f"junk:{i}" for i in range(10_000)])
        time.sleep(1.5)
        after = [post() for _ in range(3)]
        figures["full_after_free"] = "/".join(map(str, after))
    _billing(stack, load, env, figures, "full")


def half_open(stack: Stack, args: argparse.Namespace, figures: Figures) -> None:
    (worker, _) = stack.worker()
    gateway, process, _ = stack.gateway([worker], {})
    port = int(gateway.rsplit(":", 1)[1])
    before = fd_count(process.pid)
    sockets = []
    for _ in range(args.half_open):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /auction HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    time.sleep(1)
    opened = fd_count(process.pid)
    started = time.monotonic()
    time.sleep(args.half_open_wait_s)
    held_fds = fd_count(process.pid)
    alive = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        sock.close()
    figures["half_open_opened"] = str(len(sockets))
    figures["half_open_still_open"] = str(alive)
    figures["half_open_after_s"] = f"{time.monotonic() - started:.1f}"
    figures["half_open_fds"] = f"{before}->{opened}->{held_fds}"
    figures["half_open_healthz"] = str(timed_get(gateway + "/healthz")[0])


def memory(stack: Stack, args: argparse.Namespace, figures: Figures) -> None:
    import redis

    (worker, _) = stack.worker()
    retention = {"BILLING_RETENTION_S": "25", "AUCTION_DEADLINE_S": "20", "BILLING_APPEND_TIMEOUT_S": "1"}
    gateway, _, env = stack.gateway([worker], {**retention, "BILLING_TRIM_INTERVAL_S": "1"})
    client = redis.Redis.from_url((Path(env["DATA_DIR"]) / "redis.url").read_text().strip())
    body = {**BODY, "candidates": 8, "max_tokens": 64}
    used_before = int(client.info("memory")["used_memory"])
    load = Load(gateway, 2, body).start()
    started = time.monotonic()
    while sum(r.status == 200 for r in load.results) < args.auctions and time.monotonic() - started < 120:
        time.sleep(0.2)
    load.stop()
    finished = time.monotonic()
    served = sum(r.status == 200 for r in load.results)
    used = int(client.info("memory")["used_memory"])
    keys = [k for k in client.scan_iter("mosaic:auction:*", count=1000)][:20]
    audit = statistics.mean(int(client.memory_usage(k) or 0) for k in keys) if keys else 0

    def per_item(key: str, length: int) -> float:  # a structure's bytes over its items
        return int(client.memory_usage(key, samples=0) or 0) / max(1, length)

    ledger = per_item("mosaic:billing", client.xlen("mosaic:billing"))
    ledger += per_item("mosaic:ledger:applied", client.hlen("mosaic:ledger:applied"))
    for advertiser in ("strummaster", "chordify"):
        key = f"mosaic:ledger:history:{advertiser}"
        ledger += per_item(key, client.llen(key))
    figures["memory_used_delta_per_auction"] = str(round((used - used_before) / max(1, served)))
    figures["memory_audit_record_bytes"] = str(round(audit))
    figures["memory_ledger_bytes_per_auction"] = str(round(ledger))
    figures["memory_bytes_per_auction"] = str(round(audit + ledger))
    figures["memory_xlen"] = str(client.xlen("mosaic:billing"))
    time.sleep(max(0.0, finished + 25 + 3 - time.monotonic()))  # past the retention + a trim period
    figures["memory_xlen_after_retention"] = str(client.xlen("mosaic:billing"))
    figures["memory_markers_after_retention"] = str(client.hlen("mosaic:ledger:applied"))
    _billing(stack, load, env, figures, "memory")


SCENARIOS = {"hung": hung, "redis-kill": redis_kill, "redis-full": redis_full, "half-open": half_open}
SCENARIOS["memory"] = memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup-s", type=float, default=8)
    parser.add_argument("--hung-s", type=float, default=20)
    parser.add_argument("--observe-s", type=float, default=15)
    parser.add_argument("--half-open", type=int, default=1550)
    parser.add_argument("--half-open-wait-s", type=float, default=12)
    parser.add_argument("--auctions", type=int, default=40)
    args = parser.parse_args()
    figures: Figures = {"repo": args.repo.name}
    for name in args.scenarios.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            stack = Stack(args.repo.resolve(), Path(tmp))
            try:
                SCENARIOS[name](stack, args, figures)
            except Exception as error:  # a scenario that breaks is a figure too
                figures[f"{name}_error"] = repr(f"{type(error).__name__}: {error}"[:100])
            finally:
                stack.close()
    text_table(print, ["figure", "value"], [[k, v] for k, v in figures.items()])
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
