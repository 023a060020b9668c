"""The worker's transformers engine: one loaded model serving batched generation and scoring.

Modules (import from them; this file re-exports nothing): :mod:`~workers.engine.core` (``Engine``,
the one class callers use, ``load_engine``, ``EngineInputError``, ``PromptResult``),
:mod:`~workers.engine.sampling` (``SamplingOptions``, processed log-probs, the token draw),
:mod:`~workers.engine.generate` (the decode loops, ``Sample``), :mod:`~workers.engine.score`
(prompt log-probs, ``PromptScores``), :mod:`~workers.engine.fast_decode` (static KV cache, CUDA
graphs) and :mod:`~workers.engine.llama` (the functional Llama forward it runs). The package imports
torch, transformers, :mod:`workers.models` and :mod:`workers.settings`; never ``app``.
"""
