"""LLM worker speaking the vLLM OpenAI-compatible dialect, backed by transformers.

:mod:`workers.server` (the HTTP app and ``python -m workers.server``) with :mod:`workers.routes`,
:mod:`workers.http_errors`, :mod:`workers.completions` and :mod:`workers.protocol`, the engine
package :mod:`workers.engine`, the model registry :mod:`workers.models` and the worker's settings
:mod:`workers.settings`. Nothing here imports ``app``
(the gateway imports ``workers``, never the other way round).
See docs/DESIGN.md (the LLM worker) for the invariants and figures.
"""

import os as _os
import sys as _sys

# No progress bars unless stderr is a terminal (transformers' GGUF conversion, Hugging Face Hub):
# tqdm reads TQDM_DISABLE when it is first imported, so it is set here, before anything imports it
# (workers.logging_setup documents the logging rules; the gateway imports this package too).
if not (hasattr(_sys.stderr, "isatty") and _sys.stderr.isatty()):
    _os.environ.setdefault("TQDM_DISABLE", "1")
    _os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
