"""Validate captured worker traffic with vLLM's own pydantic protocol models (run in the side venv).

``<side venv python> tests/contract/vllm_validate.py RECORDS.json`` reads a JSON list of
``{"kind": ..., "body": ...}`` and prints one JSON object: ``{"results": [{"kind", "ok", "error"}],
"vllm": version}``. Kinds and the vLLM model each is validated with:

    request:completion            CompletionRequest (generation and scoring)
    request:tokenize_chat         TokenizeChatRequest
    request:tokenize_prompt       TokenizeCompletionRequest
    request:detokenize            DetokenizeRequest
    response:completion           CompletionResponse
    response:tokenize             TokenizeResponse
    response:detokenize           DetokenizeResponse
    response:models               ModelList
    response:error                ErrorResponse

Imports vLLM (only importable in the side venv, ``tests/contract/vllm_venv.py``) and the standard
library; never the project.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any


def _models() -> dict[str, Any]:
    warnings.simplefilter("ignore")
    from vllm.entrypoints.openai.completion import protocol as completion
    from vllm.entrypoints.serve.engine import protocol as engine
    from vllm.entrypoints.serve.tokenize import protocol as tokenize

    return {
        "request:completion": completion.CompletionRequest,
        "request:tokenize_chat": tokenize.TokenizeChatRequest,
        "request:tokenize_prompt": tokenize.TokenizeCompletionRequest,
        "request:detokenize": tokenize.DetokenizeRequest,
        "response:completion": completion.CompletionResponse,
        "response:tokenize": tokenize.TokenizeResponse,
        "response:detokenize": tokenize.DetokenizeResponse,
        "response:models": engine.ModelList,
        "response:error": engine.ErrorResponse,
    }


def validate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    models = _models()
    results = []
    for record in records:
        kind = record["kind"]
        try:
            models[kind].model_validate(record["body"])
        except Exception as exc:  # every failure is reported, none stops the others
            results.append({"kind": kind, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        else:
            results.append({"kind": kind, "ok": True, "error": None})
    return results


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as handle:
        records = json.load(handle)
    from importlib.metadata import version

    print(json.dumps({"vllm": version("vllm"), "results": validate(records)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
