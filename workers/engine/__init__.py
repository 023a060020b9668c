"""The worker's transformers engine: one loaded model serving batched generation and scoring.

Modules (import from them; this file re-exports nothing), top to bottom — each imports only modules
below it: :mod:`~workers.engine.core` (``Engine``, the facade) → :mod:`~workers.engine.batching`
(continuous batching) with :mod:`~workers.engine.scheduler` → :mod:`~workers.engine.generate`
(``Decoder``) and :mod:`~workers.engine.score` (``Scorer``, with :mod:`~workers.engine.score_invariant`
and :mod:`~workers.engine.prompt_logprobs`) → :mod:`~workers.engine.sampling` (``SamplingOptions``,
the token draw, ``DecodeState``) → the model runner (:mod:`~workers.engine.fast_decode`,
:mod:`~workers.engine.invariant_batch`, :mod:`~workers.engine.invariant`, :mod:`~workers.engine.llama`,
:mod:`~workers.engine.kv_pool`, :mod:`~workers.engine.tiling`) → :mod:`~workers.engine.types` and
:mod:`~workers.engine.config` (``EngineConfig``: built by the caller from the settings; the package
never reads them). Imports torch, transformers and :mod:`workers.models`; never ``app``. See
docs/DESIGN.md (the worker engine).
"""
