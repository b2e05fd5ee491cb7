"""Engines by name. Heavy backends (torch, vllm, httpx) are imported only when asked for."""
from __future__ import annotations

from typing import Any

from .base import Engine, EngineError, Request, Result, SamplingParams, Usage

BACKENDS = ("transformers", "vllm", "openai", "scripted")


def make_engine(backend: str, **kwargs: Any) -> Engine:
    """Create an engine from a backend name and its keyword arguments (the ``backend_kwargs`` of RLM)."""
    if backend == "scripted":
        from .scripted import ScriptedEngine
        return ScriptedEngine(**kwargs)
    if backend == "transformers":
        from .hf import TransformersEngine
        return TransformersEngine(**kwargs)
    if backend == "vllm":
        from .vllm_engine import VLLMEngine
        return VLLMEngine(**kwargs)
    if backend == "openai":
        from .openai_http import OpenAIEngine
        return OpenAIEngine(**kwargs)
    raise EngineError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Engine", "EngineError", "Request", "Result", "SamplingParams", "Usage", "make_engine"]
