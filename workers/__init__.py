"""LLM worker speaking the vLLM OpenAI-compatible dialect, backed by transformers."""
