"""Engines by name. Heavy backends (torch, vllm, httpx) are imported only when asked for."""
from __future__ import annotations

import inspect
from typing import Any

from .base import Engine, EngineError, Request, Result, SamplingParams, Usage

BACKENDS = ("llamacpp", "transformers", "vllm", "vllm-async", "openai", "scripted")

#: What `RLM()`, `rlm-local run/serve/bench` and the service use when no backend is named: llama.cpp in
#: process on the packaged GGUF. Chosen by scripts/bench_engines.py (README "Choosing an engine"): on this
#: 2-core CPU it decodes a single stream (root turns) fastest, loads in seconds with no conversion, and with
#: its shared prefix computed once it is level with transformers on sibling batches; vLLM for CPU batches
#: siblings faster still but starts in 40-100 s and is a 3 GB install, so it is the recommended
#: ``--sub-backend`` for long-lived servers and sweeps, not the default.
DEFAULT_BACKEND = "llamacpp"


def engine_class(backend: str) -> type[Engine]:
    """The engine class of a backend name (imports only that backend)."""
    if backend == "scripted":
        from .scripted import ScriptedEngine
        return ScriptedEngine
    if backend == "transformers":
        from .hf import TransformersEngine
        return TransformersEngine
    if backend == "vllm":
        from .vllm_engine import VLLMEngine
        return VLLMEngine
    if backend == "llamacpp":
        from .llamacpp import LlamaCppEngine
        return LlamaCppEngine
    if backend == "vllm-async":
        from .vllm_async import AsyncVLLMEngine
        return AsyncVLLMEngine
    if backend == "openai":
        from .openai_http import OpenAIEngine
        return OpenAIEngine
    raise EngineError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def make_engine(backend: str, **kwargs: Any) -> Engine:
    """Create an engine from a backend name and its keyword arguments (the ``backend_kwargs`` of RLM).
    Arguments the backend does not take are refused with an EngineError naming them (a user mistake),
    checked before the constructor runs so a TypeError from inside it still surfaces as the bug it is."""
    cls = engine_class(backend)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise EngineError(f"backend {backend!r}: {exc} (check backend_kwargs)") from None
    return cls(**kwargs)


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Engine", "EngineError", "Request", "Result", "SamplingParams", "Usage", "engine_class",
           "make_engine"]
