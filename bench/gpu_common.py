"""What both parts of bench/gpu.py share: the workload, device facts, and the report.

The query (≈ 100 prompt tokens with the chat template) and the advertiser pool both the in-process
part (bench/gpu_engine.py) and the service part (bench/gpu_service.py) send; the matmul parameters
per token of the known models and the datasheet peaks of the GPUs (for "% of peak"); the device's
name; and ``Report``, which prints each line and, with ``--out``, writes it to a file too. Not a
script. Imports the standard library only (torch inside ``device_name``).
"""

from __future__ import annotations

import os
import platform
from typing import Any, TextIO

# ≈ 80 tokens of query: with the chat template and system prompt each prompt is ≈ 100 tokens.
QUERY = (
    "I am planning a two-week trip through Japan in spring with my partner. We love food markets, "
    "easy day hikes and quiet towns, but we also want to see the big sights in Tokyo and Kyoto. How "
    "should we split the time between the cities and the countryside, which regional rail passes are "
    "worth buying, and what should we book well in advance?"
)
ADVERTISER_POOL = [
    ("strummaster", "TrailGear", "selling light hiking boots, rain jackets and day packs"),
    ("railpass", "RailGo", "selling regional rail passes and seat reservations"),
    ("foodtour", "MarketBites", "offering guided food market tours in Tokyo and Osaka"),
    ("ryokan", "QuietStay", "booking traditional inns in small towns"),
    ("esim", "RoamData", "selling prepaid eSIM data plans for travellers"),
    ("lang", "KanaQuick", "offering a phrasebook app with offline translation"),
    ("lugg", "HandsFree", "forwarding luggage between hotels"),
    ("cam", "PocketLens", "selling compact travel cameras"),
    ("insure", "SafeTrip", "selling travel insurance with hiking cover"),
    ("guide", "LocalPath", "matching travellers with local hiking guides"),
    ("bike", "PedalTown", "renting electric bikes in rural areas"),
    ("tea", "LeafRoute", "running tea farm visits near Kyoto"),
]
PARAMS = {"random-7b": 6.88e9, "smollm2": 1.35e8, "tiny-random": 6.4e6}  # matmul parameters per token
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, datasheet


class Report:
    """Prints to stdout and, with ``--out``, to a file."""

    def __init__(self, path: str | None) -> None:
        self.file: TextIO | None = open(path, "w") if path else None  # noqa: SIM115

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(0))
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def chat(messages: Any) -> list[dict[str, str]]:
    """Plain dicts of a prompt's chat messages."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]
