"""The vLLM pin is one number: pyproject's extras, docker-compose.yml, k8s/vllm.yaml and the docs agree
with ``workers.vllm_launch.VLLM_VERSION``; the oldest working version is stated in docs/DEPLOY.md."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from workers.vllm_launch import VLLM_OLDEST_SUPPORTED, VLLM_VERSION, vllm_command

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_extras_pin_the_version() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("vllm", "gpu"):
        assert extras[name] == [f"vllm=={VLLM_VERSION}"], (name, extras[name])


def test_images_pin_the_version() -> None:
    for path in (ROOT / "docker-compose.yml", ROOT / "k8s" / "vllm.yaml"):
        images = re.findall(r"image:\s*(vllm/vllm-openai:\S+)", path.read_text())
        assert images == [f"vllm/vllm-openai:v{VLLM_VERSION}"], (path.name, images)


def test_no_other_vllm_version_in_deployment_files() -> None:
    files = [ROOT / "docker-compose.yml", *sorted((ROOT / "k8s").glob("*.yaml")), ROOT / "docs/DEPLOY.md"]
    for path in files:
        for found in re.findall(r"vllm-openai:v([0-9.]+)", path.read_text()):
            assert found == VLLM_VERSION, (path.name, found)


def test_docs_state_pin_and_oldest_version() -> None:
    deploy = (ROOT / "docs" / "DEPLOY.md").read_text()
    assert f"**Pinned: vLLM {VLLM_VERSION}**" in deploy
    assert f"**Oldest vLLM that works: {VLLM_OLDEST_SUPPORTED}**" in deploy
    assert "return_token_ids" in deploy.split("Oldest vLLM that works", 1)[1][:600]
    assert tuple(int(x) for x in VLLM_OLDEST_SUPPORTED.split(".")) >= (0, 10, 2)


def test_vllm_command_flags() -> None:
    command = vllm_command("/models/x", "0.0.0.0", 8001, 2048, served_model_name="m", max_logprobs=3)
    assert command[command.index("--served-model-name") + 1] == "m"
    assert command[command.index("--max-logprobs") + 1] == "3"
    assert command[command.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert command[command.index("--scheduling-policy") + 1] == "priority"


def test_make_test_installs_its_prerequisites() -> None:
    """`make test` on a fresh machine builds the vLLM side venv and runs the promtool rule tests."""
    makefile = (ROOT / "Makefile").read_text()
    test_line = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert {"lint", "vllm-venv", "alerts-test"} <= set(test_line.split(":", 1)[1].split())
    assert "promtool test rules deploy/prometheus/alerts_test.yml" in makefile
    assert "apt-get install" in makefile and "prometheus" in makefile
