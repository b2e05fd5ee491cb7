"""Engines by name. Heavy backends (torch, vllm, httpx) are imported only when asked for."""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import EngineConfigError
from .base import Engine, EngineError, Request, Result, SamplingParams, Usage

BACKENDS = ("llamacpp", "transformers", "vllm", "vllm-async", "openai", "scripted")

#: What `RLM()`, `rlm-local run/serve/bench` and the service use when no backend is named, for root turns and
#: sub-calls alike: llama.cpp in process on the packaged GGUF. Chosen by scripts/bench_engines.py (figures in
#: scripts/results/bench_engines*.json and README "Choosing an engine"): the fastest single-stream decode on a
#: CPU, shared-prefix siblings as fast as transformers, no conversion at load and the lightest install. vLLM
#: for CPU batches siblings faster still but starts in minutes and is a 3 GB install: the recommended
#: sub-call engine (``vllm-async``) for long-lived servers and sweeps, not the default.
DEFAULT_BACKEND = "llamacpp"


def engine_class(backend: str) -> type[Engine]:
    """The engine class of a backend name (imports only that backend)."""
    if backend == "scripted":
        from .scripted import ScriptedEngine

        return ScriptedEngine
    if backend == "transformers":
        try:
            from .hf import TransformersEngine
        except ImportError as exc:  # torch or transformers missing: an install step, not a bug
            raise EngineError(
                f"the transformers backend needs `pip install 'rlm-local[transformers]'` ({exc}); the default "
                "llamacpp backend needs neither torch nor transformers"
            ) from None

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
    raise EngineConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def quiet_transformers() -> None:
    """Silence transformers' progress bars and warnings, which would interleave with a CLI's display on stderr;
    nothing to do when transformers is not installed (the engine then says how to install it)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def make_engine(backend: str, **kwargs: Any) -> Engine:
    """Create an engine from a backend name and its keyword arguments (the ``backend_kwargs`` of RLM).
    Arguments the backend does not take are refused with an EngineError naming them (a user mistake),
    checked before the constructor runs so a TypeError from inside it still surfaces as the bug it is."""
    cls = engine_class(backend)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise EngineConfigError(f"backend {backend!r}: {exc} (check backend_kwargs)") from None
    return cls(**kwargs)


__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Engine",
    "EngineError",
    "Request",
    "Result",
    "SamplingParams",
    "Usage",
    "engine_class",
    "make_engine",
    "quiet_transformers",
]
