"""What the benchmark scripts share: the local service stack, percentiles, timing and tables.

Each script in bench/ (run as ``python bench/X.py`` from anywhere) puts the repository root on
``sys.path`` and imports this module as ``bench.common``. Here: starting a worker
(``python -m workers.server``) and a gateway (``python -m app.cli serve``, embedded Redis in a temp
dir) as subprocesses and waiting until they answer, free loopback ports, the nearest-rank percentile,
the median wall time of a call, and printing a table (plain text or rich). It imports only the
standard library at module level (httpx and rich when a function needs them), so ``--help`` of every
script works before its heavy imports, and no app/ or workers/ module: the stack runs them as
subprocesses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from workers.engine.config import EngineConfig

REPO = Path(__file__).resolve().parents[1]


def engine_config() -> EngineConfig:
    """The engine's config from the environment's WORKER_* settings, as `mosaic worker` builds it (a
    bench that builds its Engine directly then changes the fields it measures)."""
    from workers.engine.config import EngineConfig
    from workers.settings import WorkerSettings

    return EngineConfig.from_settings(WorkerSettings())


# ------------------------------------------------------------------------------------ service stack
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail if ``process`` exits first or ``timeout_s`` passes."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


@contextlib.contextmanager
def local_stack(
    model: str,
    worker_args: Sequence[str],
    env: dict[str, str],
    worker_env: dict[str, str],
    gateway_env: dict[str, str],
    *,
    ready_timeout_s: float,
    stop_timeout_s: float,
    log_dir: Path | None = None,
) -> Iterator[tuple[str, str]]:
    """A worker and a gateway on free loopback ports; yields (gateway_url, worker_url).

    The worker runs ``python -m workers.server --model M --port P`` + ``worker_args`` with ``env`` +
    ``worker_env``; the gateway ``python -m app.cli serve`` with ``env`` + ``gateway_env`` +
    WORKER_URLS / PORT / DATA_DIR (a temp dir, so its Redis is an embedded one: REDIS_URL is
    dropped). With ``log_dir`` their output goes to worker.log / gateway.log there, else to this
    terminal. On exit both get SIGTERM (their whole process group) and ``stop_timeout_s`` to end.
    """
    worker_port, gateway_port = free_port(), free_port()
    worker_url, gateway_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{gateway_port}"
    with tempfile.TemporaryDirectory() as data_dir, contextlib.ExitStack() as logs:

        def log(name: str) -> IO[bytes] | None:
            return logs.enter_context(open(log_dir / f"{name}.log", "wb")) if log_dir else None

        worker_log, gateway_log = log("worker"), log("gateway")
        gateway_env = {
            **env,
            **gateway_env,
            "WORKER_URLS": worker_url,
            "PORT": str(gateway_port),
            "DATA_DIR": data_dir,
        }
        gateway_env.pop("REDIS_URL", None)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.server",
                "--model",
                model,
                "--port",
                str(worker_port),
                *worker_args,
            ],
            cwd=REPO,
            env={**env, **worker_env},
            start_new_session=True,
            stdout=worker_log,
            stderr=subprocess.STDOUT if worker_log else None,
        )
        gateway = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            cwd=REPO,
            env=gateway_env,
            start_new_session=True,
            stdout=gateway_log,
            stderr=subprocess.STDOUT if gateway_log else None,
        )
        try:
            wait_ready(worker_url + "/health", worker, ready_timeout_s)
            wait_ready(gateway_url + "/readyz", gateway, ready_timeout_s)
            yield gateway_url, worker_url
        finally:
            for process in (gateway, worker):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=stop_timeout_s)


# ------------------------------------------------------------------------------------------ numbers
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 1]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None) -> float:
    """Median wall time of ``repeats`` calls (seconds); ``sync`` (e.g. a CUDA sync) runs around each."""
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        started = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------- tables
def text_table(emit: Callable[[str], None], header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned table, one ``emit`` per line: the first column left, the others right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for index, line in enumerate([header, *rows]):
        emit(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if index == 0:
            emit("-" * (sum(widths) + 2 * (len(widths) - 1)))


def rich_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> None:
    """A rich table on stdout: the first ``left`` columns left-aligned, the others right-aligned.

    rich is a dependency, but the numbers matter more than the frame: without it, plain columns.
    """
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for line in [header, *rows]:
            print("  ".join(cell.rjust(10) for cell in line))
        return
    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index < left else "right")
    for line in rows:
        table.add_row(*line)
    Console().print(table)
