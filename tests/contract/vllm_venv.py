"""A side virtualenv holding the pinned vLLM wheel, for validating our traffic with vLLM's own models.

``python tests/contract/vllm_venv.py`` (``make vllm-venv``, which ``make test`` depends on) builds it
once per machine under ``$MOSAIC_CACHE_DIR/vllm-<VLLM_VERSION>`` (default ``~/.cache/mosaic``) and
prints its python; later calls only check it (cached: well under a second). How:

* a venv whose ``.pth`` file appends the project venv's site-packages (torch 2.13.0, pydantic,
  fastapi, transformers ... exactly the project's versions: what vLLM's protocol models meet in the
  gateway's world);
* ``pip install --no-deps vllm==<VLLM_VERSION>`` (vLLM's own pins, e.g. torch 2.14.0, would replace
  the project's) plus the few pure-Python packages its protocol modules import, pinned below.

Built in a temporary directory and renamed into place under a lock (racing builders are harmless);
a ``.complete`` stamp names what was installed, so a changed pin builds a new venv. ``make
clean-cache`` removes it with the model cache. Imports the standard library and
``workers.vllm_launch`` (the pin) and ``workers.cache`` only.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workers.cache import cache_root  # noqa: E402
from workers.vllm_launch import VLLM_VERSION  # noqa: E402

# What `vllm.entrypoints.openai.completion.protocol`, `...serve.tokenize.protocol` and
# `...serve.engine.protocol` of vLLM 0.33.0 import beyond the project's own dependencies.
PROTOCOL_DEPS = (
    "aiohappyeyeballs==2.7.1",
    "aiohttp==3.14.5",
    "aiosignal==1.4.0",
    "cachetools==8.0.2",
    "cbor2==6.3.0",
    "cloudpickle==3.1.3",
    "frozenlist==1.8.0",
    "msgspec==0.23.0",
    "multidict==7.2.1",
    "openai==3.57.0",
    "openai-harmony==0.0.8",
    "propcache==0.5.4",
    "py-cpuinfo==9.0.0",
    "pybase64==1.5.1",
    "yarl==1.25.1",
)
PROTOCOL_MODULES = (
    "vllm.entrypoints.openai.completion.protocol",
    "vllm.entrypoints.serve.tokenize.protocol",
    "vllm.entrypoints.serve.engine.protocol",
)


def venv_dir() -> Path:
    return cache_root() / f"vllm-{VLLM_VERSION}"


def _base_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _stamp_text() -> str:
    return "\n".join([f"vllm=={VLLM_VERSION}", *PROTOCOL_DEPS, f"base={_base_site_packages()}", ""])


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def is_ready(venv: Path | None = None) -> bool:
    venv = venv or venv_dir()
    stamp = venv / ".complete"
    return stamp.is_file() and stamp.read_text() == _stamp_text() and _python(venv).exists()


def _build(target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True)
        purelib = subprocess.run(
            [str(_python(tmp)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # after the venv's own site-packages: the pinned wheels here win over the project's
        Path(purelib, "_mosaic_project.pth").write_text(_base_site_packages() + "\n")
        pip = [sys.executable, "-m", "pip", "--python", str(_python(tmp)), "install", "-q", "--no-deps"]
        pip += ["--disable-pip-version-check", "--no-warn-conflicts"]
        subprocess.run([*pip, f"vllm=={VLLM_VERSION}", *PROTOCOL_DEPS], check=True)
        check = "import warnings; warnings.simplefilter('ignore'); " + "; ".join(
            f"import {m}" for m in PROTOCOL_MODULES
        )
        subprocess.run([str(_python(tmp)), "-c", check], check=True)
        # the venv's scripts name its directory: rename, then rewrite nothing (we only run bin/python)
        (tmp / ".complete").write_text(_stamp_text())
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_vllm_venv() -> Path:
    """The side venv's python, building the venv first when missing or stale (minutes, once)."""
    target = venv_dir()
    if is_ready(target):
        return _python(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not is_ready(target):
                _build(target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _python(target)


if __name__ == "__main__":
    print(ensure_vllm_venv())
