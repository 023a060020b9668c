"""A short headless locust run (loadtests/locustfile.py) against the embedded service.

`mosaic serve --model tiny-random` runs as a subprocess with nothing configured (in-process worker,
embedded Redis in a temporary DATA_DIR, embedded ledger consumer) and API keys on; locust drives it
for ~20 s with 4 users. Every response is checked by the locustfile (status, schema, payments sum to
revenue, ledger consistency): the run must end with exit code 0 and no failure in its CSV stats.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
API_KEY = "locust-test-key"
RUN_TIME_S = 20

pytestmark = pytest.mark.slow


def _python() -> str:
    venv_python = ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _instances(tmp_path: Path) -> Path:
    """The shared instances when present (the real traffic), else a small file of the same shape."""
    spec = importlib.util.spec_from_file_location("load_traffic", ROOT / "loadtests" / "traffic.py")
    assert spec is not None and spec.loader is not None
    traffic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(traffic)
    with contextlib.suppress(FileNotFoundError):
        return Path(traffic.resolve_instances_path(""))
    path = tmp_path / "instances.jsonl"
    rows = [
        {
            "query": f"Question number {i} about learning the guitar.",
            "advertisers": [
                {"id": f"shop{i}", "name": f"Shop{i}", "description": "selling guitars and tuners"}
            ],
        }
        for i in range(5)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def embedded_gateway(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "WORKER_URLS", "HOST", "PORT"}}
    env.update(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "API_KEYS": API_KEY,
            "LOG_JSON": "false",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                _python(),
                "-m",
                "app.cli",
                "serve",
                "--model",
                "tiny-random",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=tmp_path,  # no stray .env from the repository
            env={**env, "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"gateway exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"gateway not ready in 240 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_headless_locust_run_has_no_failures(embedded_gateway: str, tmp_path: Path) -> None:
    prefix = tmp_path / "load"
    env = {
        **os.environ,
        "MOSAIC_API_KEY": API_KEY,
        "MOSAIC_INSTANCES": str(_instances(tmp_path)),
        "LOCUST_SEED": "7",
        "MOSAIC_LOAD_CANDIDATES": "2",
        "MOSAIC_LOAD_MAX_TOKENS": "8",
        "MOSAIC_LOAD_PROPOSALS": "context,reference,mixture",
        "MOSAIC_LOAD_WAIT_MIN_S": "0.1",
        "MOSAIC_LOAD_WAIT_MAX_S": "0.5",
        "MOSAIC_LOAD_LEDGER_SETTLE_S": "2",
    }
    result = subprocess.run(
        [
            _python(),
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            "4",
            "-r",
            "2",
            "-t",
            f"{RUN_TIME_S}s",
            "--stop-timeout",
            "30",
            "--host",
            embedded_gateway,
            "--csv",
            str(prefix),
            "--only-summary",
            "--exit-code-on-error",
            "1",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIME_S + 150,
    )
    output = (result.stdout + result.stderr)[-6000:]
    stats = {row["Name"]: row for row in _rows(Path(f"{prefix}_stats.csv"))}
    failures = _rows(Path(f"{prefix}_failures.csv"))
    exceptions = _rows(Path(f"{prefix}_exceptions.csv"))
    assert not failures, f"locust failures: {failures[:5]}\n{output}"
    assert not exceptions, f"locustfile exceptions: {exceptions[:3]}\n{output}"
    assert result.returncode == 0, output
    assert int(stats["Aggregated"]["Failure Count"]) == 0, output
    for name, row in stats.items():
        assert int(row["Failure Count"]) == 0, f"{name}: {row}"
    assert int(stats["POST /auction"]["Request Count"]) >= 3, f"too few auctions:\n{output}"
    assert int(stats["GET /ledger/summary"]["Request Count"]) >= 1, output
