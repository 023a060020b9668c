"""Real worker processes for tests: ``python -m workers.server`` on a free port (never a fake).

``start_worker_process(model="tiny-random")`` starts one and waits until ``GET /health`` answers;
the session fixture ``tiny_worker`` shares one tiny-random worker across the test session;
``worker_stopped`` holds one SIGSTOPped for a block; ``generation_tokens`` reads its token counter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _python() -> str:
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


@dataclass
class WorkerProcess:
    """A running ``workers.server`` subprocess."""

    model: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it does not exit in time."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL: the worker dies at once (crash tests)."""
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=15)
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            self.log_path.unlink()


def start_worker_process(
    model: str = "tiny-random",
    port: int | None = None,
    *,
    device: str = "cpu",
    env: dict[str, str] | None = None,
    startup_timeout: float = 240.0,
) -> WorkerProcess:
    """Start ``python -m workers.server --model MODEL --port PORT`` and wait for ``/health``."""
    port = port or free_port()
    child_env = dict(os.environ)
    child_env.setdefault("WORKER_TORCH_THREADS", "1")
    child_env.setdefault("HF_HUB_OFFLINE", "1")
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    child_env.update(env or {})
    log_fd, log_name = tempfile.mkstemp(prefix=f"mosaic-worker-{port}-", suffix=".log")
    command = [_python(), "-m", "workers.server", "--model", model, "--port", str(port), "--device", device]
    with os.fdopen(log_fd, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    worker = WorkerProcess(model=model, port=port, process=process, log_path=Path(log_name))
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            tail = worker.log_tail()
            worker.kill()
            raise RuntimeError(f"worker {model} exited with {process.returncode} during start:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{worker.url}/health", timeout=2.0).status_code == 200:
                return worker
        time.sleep(0.2)
    tail = worker.log_tail()
    worker.kill()
    raise TimeoutError(f"worker {model} not healthy after {startup_timeout:.0f} s:\n{tail}")


@contextlib.contextmanager
def running_worker(model: str, **kwargs: Any) -> Iterator[WorkerProcess]:
    """A worker process (`start_worker_process(model, **kwargs)`), stopped on exit: for fixtures."""
    worker = start_worker_process(model, **kwargs)
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def tiny_worker() -> Iterator[WorkerProcess]:
    """One tiny-random worker process shared by the whole session."""
    with running_worker("tiny-random") as worker:
        yield worker


@contextlib.contextmanager
def worker_stopped(worker: WorkerProcess) -> Iterator[None]:
    """The worker SIGSTOPped (the kernel still takes its connections, nothing answers), then SIGCONT."""
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(worker.pid, signal.SIGCONT)


def generation_tokens(worker: WorkerProcess) -> float:
    """The worker's ``vllm:generation_tokens_total`` (0 before its first generation)."""
    lines = httpx.get(f"{worker.url}/metrics").text.splitlines()
    samples = [x for x in lines if x.startswith("vllm:generation_tokens_total")]
    return float(samples[0].split()[-1]) if samples else 0.0
