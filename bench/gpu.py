"""Decode speed of the worker and auction latency through the HTTP service (issue 8).

Two parts, each usable alone (this file is the command line; the parts live in bench/gpu_engine.py
and bench/gpu_service.py, what both use in bench/gpu_common.py and bench/common.py):

``--engine`` (in process, gpu_engine.py): one request's decode time per step for the worker's decode
loops (``legacy`` = the transformers loop, ``eager`` = static KV cache, ``fast`` = static cache + CUDA
graphs on a GPU), for each ``--ns`` sample count; then teacher-forced scoring of an auction-shaped
batch (every reply under every context), with and without the shared-prefix prefill.

``--service`` (default, gpu_service.py): a worker (``python -m workers.server``,
``WORKER_FORCE_IGNORE_EOS=1`` so every reply decodes exactly ``--tokens``) and a gateway (``python -m
app.cli serve``, embedded Redis in a temp dir) as subprocesses, as ``bench/latency.py`` does. Times one
reply (``/v1/completions``, n=1) and full auctions (``POST /auction``, context proposal) for each
``--auctions`` ``M:advertisers``.

    python3 bench/gpu.py --model random-7b --device cuda --engine --service   # H100: the issue's figures
    .venv/bin/python bench/gpu.py --model smollm2 --device cpu --engine --tokens 64 --ns 1,8 \\
        --modes legacy,fast --no-service                                        # CPU before/after

Prints tables; the last line is
``auction_s=<s> single_s=<s> ratio=<auction/single> ms_per_token=<ms>`` for the first auction case
(``ms_per_token``: the single reply's wall time per token). ``--out FILE`` writes everything there too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_common import Report, device_name
from bench.gpu_engine import engine_part
from bench.gpu_service import service_part


def parse_auctions(text: str) -> list[tuple[int, int]]:
    cases = []
    for part in text.split(","):
        m, _, advertisers = part.partition(":")
        cases.append((int(m), int(advertisers or 2)))
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per reply (ignore_eos)")
    parser.add_argument(
        "--auctions", type=parse_auctions, default=parse_auctions("20:2,64:10"), help="M:advertisers,..."
    )
    parser.add_argument("--ns", type=lambda s: [int(x) for x in s.split(",")], default=[1, 20, 64])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["legacy", "eager", "fast"])
    parser.add_argument("--engine", action="store_true", help="run the in-process decode / scoring part")
    parser.add_argument("--no-service", action="store_true", help="skip the HTTP service part")
    parser.add_argument("--service-decode", default="fast", choices=["fast", "eager", "legacy"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (CPU)")
    parser.add_argument("--score-token-budget", type=int, default=8192)
    parser.add_argument("--params", type=float, default=None, help="matmul parameters per token (FLOPs/2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s")
    parser.add_argument("--out", default=None, help="also write the report here")
    parser.add_argument("--log-dir", default=None, help="worker / gateway logs (default: a temp dir)")
    args = parser.parse_args(argv)

    report = Report(args.out)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report(f"# bench/gpu.py  {stamp}  device: {device_name(args.device)}")
    report(f"# python3 bench/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    try:
        import torch
        import transformers

        report(f"# torch {torch.__version__}  transformers {transformers.__version__}")
    except ImportError:
        pass
    try:
        if args.engine:
            engine_part(args, report)
            report()
            gc.collect()  # the in-process model's memory goes back before the worker loads its own
            with contextlib.suppress(ImportError):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        if not args.no_service:
            outcome = service_part(args, report)
            if outcome is not None:
                auction_s, single_s, ratio, ms_per_token = outcome
                report(
                    f"auction_s={auction_s:.3f} single_s={single_s:.3f} ratio={ratio:.3f} "
                    f"ms_per_token={ms_per_token:.2f}"
                )
    finally:
        report.close()


if __name__ == "__main__":
    main()
