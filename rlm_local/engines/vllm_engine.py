"""vLLM in-process: one `LLM` with automatic prefix caching; every `generate` is one `llm.generate` call.

vLLM schedules the whole list itself (continuous batching inside the call) and its prefix cache shares the
KV blocks of a common prefix between siblings of the same call and later calls, so the scheduler's
batches map straight onto it. We tokenize prompts ourselves, which lets us render chat requests with the
model's own template (``render`` is exactly what the model sees), refuse a too-long prompt for that
request only (vLLM would reject the whole list), and avoid a second BOS after templates that write one.

vllm is an optional extra (`pip install 'rlm-local[vllm]'`, CUDA only) and is imported only here.
"""
from __future__ import annotations

import gc
import threading
import time
from typing import Any

from .base import Engine, EngineError, Request, Result, Usage, generate_isolated

DEFAULT_LLM_KWARGS: dict[str, Any] = dict(enable_prefix_caching=True, gpu_memory_utilization=0.85,
                                          tensor_parallel_size=1, dtype="auto")
INSTALL_HINT = "the vllm backend needs `pip install 'rlm-local[vllm]'` on a machine with a CUDA GPU"


def import_vllm() -> Any:
    try:
        import vllm
    except Exception as exc:  # ImportError, or CUDA/driver errors raised while vllm initialises
        raise EngineError(f"{INSTALL_HINT}: {type(exc).__name__}: {exc}") from exc
    return vllm


class VLLMEngine(Engine):
    backend = "vllm"

    def __init__(self, model_name: str, max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
                 tensor_parallel_size: int | None = None, enable_prefix_caching: bool | None = None,
                 max_num_seqs: int | None = None, dtype: str | None = None, prompt_format: str | None = None,
                 **llm_kwargs: Any) -> None:
        """``model_name``: a local directory, a Hugging Face id already in the local cache, or a registered
        model name (``qwen3-coder``), whose card's ``[vllm]`` section supplies defaults. Arguments left as
        None fall back to the card, then to our defaults; ``llm_kwargs`` go to ``vllm.LLM`` unchanged
        (e.g. ``quantization``, ``enforce_eager``, ``kv_cache_dtype``, ``seed``)."""
        if not model_name:
            raise EngineError("the vllm backend needs backend_kwargs={'model_name': <local dir or HF id>}")
        from ..models import find_card, set_offline

        vllm = import_vllm()
        set_offline()  # rlm-local never downloads weights; vllm reads the local HF cache or a directory
        self._vllm = vllm
        card = find_card(model_name)
        self.model_name = card.name if card else model_name
        explicit = dict(max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                        tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=enable_prefix_caching,
                        max_num_seqs=max_num_seqs, dtype=dtype)
        kwargs: dict[str, Any] = dict(DEFAULT_LLM_KWARGS)
        kwargs.update(card.extra.get("vllm", {}) if card else {})
        kwargs.update({k: v for k, v in explicit.items() if v is not None})
        kwargs.update(llm_kwargs)
        kwargs["model"] = self.model_name
        self.llm_kwargs = kwargs
        try:
            self._llm = vllm.LLM(**kwargs)
        except Exception as exc:
            raise EngineError(f"vllm could not load {self.model_name!r} (a local directory or a model in the "
                              f"local Hugging Face cache): {type(exc).__name__}: {exc}") from exc
        self.tokenizer = self._llm.get_tokenizer()
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        fmt = prompt_format or (card.prompt_format if card else ("chat" if has_template else "completion"))
        self.prompt_format = fmt  # type: ignore[assignment]
        self.context_length = _max_model_len(self._llm) or int(kwargs.get("max_model_len") or 0)
        self._lock = threading.Lock()  # LLM is not re-entrant; the scheduler batches callers anyway

    # ---- prompts ------------------------------------------------------------------------------------------------
    def render(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        messages = [dict(m) for m in request.messages or ()]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return super().render(request)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _token_ids(self, request: Request) -> list[int]:
        text = self.rendered(request)
        bos = getattr(self.tokenizer, "bos_token", None)
        # A chat template that already wrote BOS must not get a second one; raw prompts get the usual specials.
        add_special = request.prompt is not None and not (bos and text.startswith(bos))
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def _sampling(self, request: Request) -> Any:
        s = request.sampling
        return self._vllm.SamplingParams(n=1, max_tokens=s.max_tokens, temperature=max(0.0, s.temperature),
                                         top_p=s.top_p if not s.greedy else 1.0, stop=list(s.stop) or None,
                                         seed=s.seed)

    # ---- generation ------------------------------------------------------------------------------------------------
    def generate(self, requests: list[Request]) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        prompts: list[dict[str, Any]] = []
        params: list[Any] = []
        index: list[int] = []
        for i, req in enumerate(requests):
            try:
                ids = self._token_ids(req)
                if self.context_length and len(ids) >= self.context_length:
                    raise EngineError(f"prompt of {len(ids)} tokens does not fit the model's context of "
                                      f"{self.context_length} tokens")
                params.append(self._sampling(req))
            except Exception as exc:  # template errors, bad sampling values: this request only
                results[i] = Result.failed(f"vllm: {type(exc).__name__}: {exc}")
                continue
            prompts.append({"prompt_token_ids": ids})
            index.append(i)
        if prompts:
            for i, res in zip(index, generate_isolated(
                    lambda pairs: self._generate_batch([p for p, _ in pairs], [q for _, q in pairs]),
                    list(zip(prompts, params)), "vllm")):
                results[i] = res
        return [r if r is not None else Result.failed("vllm: internal error: no result") for r in results]

    def _generate_batch(self, prompts: list[dict[str, Any]], params: list[Any]) -> list[Result]:
        if self._llm is None:
            raise EngineError("engine is closed")
        started = time.perf_counter()
        with self._lock:
            outputs = self._llm.generate(prompts, sampling_params=params, use_tqdm=False)
        share = (time.perf_counter() - started) / len(prompts)  # wall time split so per-call sums add up
        if len(outputs) != len(prompts):
            raise EngineError(f"vllm returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [self._result(out, share) for out in outputs]

    @staticmethod
    def _result(out: Any, seconds: float) -> Result:
        completion = out.outputs[0]
        cached = getattr(out, "num_cached_tokens", None)  # None in versions that do not report it: unknown
        usage = Usage(calls=1, prompt_tokens=len(out.prompt_token_ids or ()),
                      cached_tokens=int(cached) if cached is not None else None,
                      completion_tokens=len(completion.token_ids), seconds=seconds)
        finish = "length" if completion.finish_reason == "length" else "stop"
        return Result(text=completion.text, finish_reason=finish, usage=usage)

    def close(self) -> None:
        if getattr(self, "_llm", None) is None:
            return
        self._llm = None
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # best effort: the process may be shutting down
            pass


def _max_model_len(llm: Any) -> int:
    """The context window vLLM settled on (it may lower max_model_len to fit the KV cache)."""
    engine = getattr(llm, "llm_engine", None)
    for path in (("model_config",), ("vllm_config", "model_config")):
        obj: Any = engine
        for name in path:
            obj = getattr(obj, name, None)
        value = getattr(obj, "max_model_len", None)
        if isinstance(value, int) and value > 0:
            return value
    return 0
