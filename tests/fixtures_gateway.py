"""A real gateway process for tests: ``python -m app.cli serve`` over real worker and Redis processes.

`start_gateway_process(worker_url, redis_url, data_dir, **env)` starts one on a free port (or `port`:
a restart after a kill) and waits
until ``/readyz`` answers 200; `GatewayProcess.stop()` sends SIGTERM to its process group. The
limits default small so that the valid inputs a fuzzer finds stay cheap to serve.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fixtures_worker import free_port

REPO = Path(__file__).resolve().parent.parent

SMALL_LIMITS = {
    "MAX_CANDIDATES": "3",
    "MAX_TOKENS_LIMIT": "4",
    "MAX_ADVERTISERS": "3",
    "DEFAULT_CANDIDATES": "2",
    "DEFAULT_MAX_TOKENS": "4",
}


@dataclass
class GatewayProcess:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL (crash tests): no shutdown, nothing flushed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def start_gateway_process(
    worker_url: str,
    redis_url: str,
    data_dir: Path,
    timeout_s: float = 120,
    port: int | None = None,
    **env: str,
) -> GatewayProcess:
    port = port or free_port()
    child_env = {
        **os.environ,
        "WORKER_URLS": worker_url,
        "REDIS_URL": redis_url,
        "PORT": str(port),
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        **SMALL_LIMITS,
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve"], cwd=REPO, env=child_env, start_new_session=True
    )
    gateway = GatewayProcess(port, process)
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(f"{gateway.url}/readyz", timeout=2).status_code == 200:
                return gateway
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout_s:
            gateway.stop()
            raise RuntimeError("gateway did not become ready")
        time.sleep(0.3)
