"""``mosaic worker --engine vllm``: exec the stock vLLM server with the flags of VLLM_PROTOCOL.md.

Processed log-probs (``--logprobs-mode processed_logprobs``: log q is the density the candidates were
drawn from), one log-prob per position, priority scheduling (``--scheduling-policy priority``: the
gateway's fair-share ``priority`` on each request, WORKER_PRIORITY), the project's max_model_len, and
the worker's API key passed as VLLM_API_KEY in the environment (not on the command line, visible in
ps). Imports the model registry and the worker settings only.
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

from __future__ import annotations

import logging
import os
import shutil

from workers.settings import get_worker_settings

log = logging.getLogger(__name__)

# The one pin of vLLM: pyproject's `vllm` / `gpu` extras, docker-compose.yml's and k8s/vllm.yaml's
# `vllm/vllm-openai:v<VERSION>` images and the contract test's side venv (tests/contract/
# test_vllm_models.py) all use it; tests/unit/test_vllm_pin.py checks that they agree.
VLLM_VERSION = "0.33.0"
# The oldest vLLM whose /v1/completions has `return_token_ids` (choice.token_ids and
# prompt_token_ids), which the gateway reads: 0.10.2. Older ones ignore the flag, so every
# generation would come back without token ids and the gateway would answer 502 (docs/DEPLOY.md).
VLLM_OLDEST_SUPPORTED = "0.10.2"


def vllm_command(
    model: str,
    host: str,
    port: int,
    max_model_len: int | None = None,
    served_model_name: str | None = None,
    max_logprobs: int = 1,
) -> list[str]:
    """The exact ``vllm serve`` command of a worker for ``model`` (registry names mapped to paths)."""
    from workers.convert import ensure_gemma3_converted, ensure_smollm2_converted

    path = model
    extra: list[str] = []
    if model == "smollm2":
        path = str(ensure_smollm2_converted())
    elif model == "gemma3-270m":  # the same conversion: plain-text template, stops at the end of a line
        path = str(ensure_gemma3_converted())
    elif model in ("tiny-random", "random-7b"):
        raise RuntimeError(
            f"model {model!r} is built in process by the transformers engine; vLLM cannot serve it "
            "(use smollm2, gemma3-270m, a local Hugging Face directory or a Hub id)"
        )
    command = [
        "vllm",
        "serve",
        path,
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        served_model_name or model,
        "--logprobs-mode",
        "processed_logprobs",
        "--max-logprobs",
        str(max_logprobs),
        "--no-enable-prefix-caching",
        "--scheduling-policy",
        "priority",
        "--max-model-len",
        str(max_model_len or get_worker_settings().worker_max_model_len),
        *extra,
    ]
    return command


def exec_vllm(
    model: str,
    host: str,
    port: int,
    api_key: str | None,
    served_model_name: str | None = None,
    max_logprobs: int = 1,
) -> None:
    """Never returns: ``execve`` of ``vllm serve`` with `vllm_command`'s flags."""
    executable = shutil.which("vllm")
    if executable is None:
        raise RuntimeError(
            f"engine 'vllm' needs vLLM {VLLM_VERSION} installed (pip install 'mosaic-auction[vllm]')"
        )
    command = vllm_command(model, host, port, served_model_name=served_model_name, max_logprobs=max_logprobs)
    log.info("exec %s", " ".join(command))
    env = {**os.environ, "VLLM_API_KEY": api_key} if api_key else dict(os.environ)
    os.execve(executable, command, env)
