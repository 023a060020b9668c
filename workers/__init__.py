"""LLM worker speaking the vLLM OpenAI-compatible dialect, backed by transformers.

:mod:`workers.server` (the HTTP app and ``python -m workers.server``) with :mod:`workers.completions`
and :mod:`workers.protocol`, the engine package :mod:`workers.engine`, the model registry
:mod:`workers.models` and the worker's settings :mod:`workers.settings`. Nothing here imports ``app``
(the gateway imports ``workers``, never the other way round).
"""
