"""vLLM's ``AsyncLLM`` in-process: continuous batching across concurrent callers (backend ``vllm-async``).

One AsyncLLM lives on an event loop in a background thread. ``generate`` submits each request to it as
soon as it is called and blocks only its caller: requests of different calls join the batch vLLM is
already running, step by step, instead of waiting for the previous ``LLM.generate`` list to finish. The
engine says so to the scheduler (``concurrent_calls``), which then hands over each gathered batch from
its own thread as soon as it is taken; with the ``LLM`` engine a new run's request waits for the call in
flight to end.

Guarantees: results come back in request order; one request's failure (too long, bad sampling, an error
inside vLLM) fails that request only; ``generate(requests, deadline=...)`` aborts every request still
running at ``time.monotonic() >= deadline``, and a request whose ``cancel`` event is set, within a poll
interval and an engine step (vLLM frees its KV blocks) and returns it failed with the tokens it had
produced counted in its usage; ``close()`` aborts what is running, shuts the engine core
down, kills what is left of it and stops the loop thread. Prompt rendering, CPU defaults, the bounded
start-up and ``cached_tokens`` are those of the ``vllm`` engine (vllm_engine.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from .base import EngineError, Request, Result, Usage
from .vllm_engine import DEFAULT_STARTUP_TIMEOUT, VLLMBase, child_pids, kill_pids, start_bounded

logger = logging.getLogger("rlm_local.engines.vllm_async")

CONCURRENT_CALLS = 64  # scheduler calls in flight at once; vLLM's own max_num_seqs bounds the running batch
POLL_S = 0.05  # how often a running request looks at its cancel event


class AsyncVLLMEngine(VLLMBase):
    backend = "vllm-async"
    supports_deadline = True
    supports_cancel = True
    concurrent_calls = CONCURRENT_CALLS

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
        **engine_kwargs: Any,
    ) -> None:
        """Same arguments as the ``vllm`` engine; ``engine_kwargs`` go to ``vllm.AsyncEngineArgs``."""
        self._engine: Any = None
        self._children: set[int] = set()
        self._ids = itertools.count()
        explicit = dict(
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            max_num_seqs=max_num_seqs,
            dtype=dtype,
        )
        kwargs = self._configure(model_name, explicit, engine_kwargs, prompt_format)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rlm-vllm-async", daemon=True)
        self._thread.start()
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            async def make() -> Any:  # built on the loop so its output handler runs there
                return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

            self._engine, self._children, self.load_seconds = start_bounded(
                lambda: self._call(make(), None), startup_timeout, f"vllm AsyncLLM ({self.model_name!r})"
            )
            tokenizer = self._call(_maybe_await(self._engine.get_tokenizer()), 60.0)
        except BaseException:
            self.close()
            raise
        logger.info("vllm AsyncLLM for %s started in %.1f s", self.model_name, self.load_seconds)
        self._after_start(tokenizer, int(getattr(self._engine.model_config, "max_model_len", 0) or 0))

    def _call(self, coro: Any, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- generation -----------------------------------------------------------------------------------------
    def generate(
        self, requests: list[Request], deadline: float | None = None, cancel: Sequence[threading.Event] | None = None
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        futures: dict[int, concurrent.futures.Future] = {}
        engine = self._engine
        for i, req in enumerate(requests):
            if engine is None:
                results[i] = Result.failed("vllm-async: EngineError: engine is closed")
                continue
            try:
                ids, params = self._prepare(req)
            except Exception as exc:  # too long, template errors, bad sampling values: this request only
                results[i] = Result.failed(f"vllm-async: {type(exc).__name__}: {exc}")
                continue
            stop = cancel[i] if cancel is not None else None
            futures[i] = asyncio.run_coroutine_threadsafe(self._one(engine, ids, params, deadline, stop), self._loop)
        for i, fut in futures.items():
            try:
                results[i] = fut.result()
            except Exception as exc:  # _one reports its own failures; this is the loop going away under us
                results[i] = Result.failed(f"vllm-async: {type(exc).__name__}: {exc}")
        return [r if r is not None else Result.failed("vllm-async: internal error: no result") for r in results]

    async def _one(
        self, engine: Any, ids: list[int], params: Any, deadline: float | None, stop: threading.Event | None
    ) -> Result:
        """One request on the loop: streams it to completion, or aborts it at the deadline or its cancel."""
        request_id = f"rlm-{next(self._ids)}"
        started = time.perf_counter()
        last: list[Any] = []

        async def consume() -> None:
            async for out in engine.generate({"prompt_token_ids": ids}, params, request_id):
                last[:] = [out]

        task = asyncio.ensure_future(consume())
        try:
            why = await _watch(task, deadline, stop)
            if why is None:
                await task  # done: raises what the request raised
        except asyncio.CancelledError:
            task.cancel()
            await _abort(engine, request_id)
            raise
        except Exception as exc:  # an error inside vLLM for this request
            await _abort(engine, request_id)
            return Result.failed(f"vllm-async: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        if why is not None:
            task.cancel()
            await _abort(engine, request_id)
            done = len(last[0].outputs[0].token_ids) if last else 0
            usage = Usage(
                calls=1,
                prompt_tokens=len(ids),
                cached_tokens=_cached(last[0]) if last else None,
                completion_tokens=done,
                seconds=time.perf_counter() - started,
            )
            return Result(
                text="",
                finish_reason="error",
                usage=usage,
                error=f"vllm-async: {why} after {done} tokens (request aborted)",
            )
        if not last:
            return Result.failed("vllm-async: vLLM returned no output")
        return self._result(last[0], time.perf_counter() - started)

    # ---- shutdown -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Abort running requests, shut the engine core down, kill what remains of it, stop the loop. Safe
        to call twice."""
        engine, self._engine = getattr(self, "_engine", None), None
        loop = getattr(self, "_loop", None)
        if engine is not None and loop is not None and loop.is_running():
            try:
                self._call(_shutdown(engine), 30.0)
            except Exception as exc:  # best effort; the processes are killed below in any case
                logger.warning("vllm-async shutdown: %s: %s", type(exc).__name__, exc)
        children: set[int] = getattr(self, "_children", set())
        kill_pids({pid for pid in children if pid in child_pids()})
        if loop is not None and not loop.is_closed():
            if loop.is_running():
                loop.call_soon_threadsafe(loop.stop)
                self._thread.join(10.0)
            if not loop.is_running():
                loop.close()


async def _watch(task: asyncio.Future, deadline: float | None, stop: threading.Event | None) -> str | None:
    """Wait for ``task``; returns why it must be stopped instead (its deadline passed, it was cancelled)."""
    while not task.done():
        if stop is not None and stop.is_set():
            return "cancelled"
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return "stopped at the deadline"
        wait = POLL_S if stop is not None else left
        await asyncio.wait({task}, timeout=wait if left is None else min(wait or left, left))
    return None


async def _abort(engine: Any, request_id: str) -> None:
    try:
        await _maybe_await(engine.abort(request_id))
    except Exception as exc:  # already finished or engine going away
        logger.debug("abort %s: %s", request_id, exc)


async def _shutdown(engine: Any) -> None:
    for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
        task.cancel()  # requests still streaming: their callers get "cancelled"
    engine.shutdown()


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future) else value


def _cached(out: Any) -> int | None:
    cached = getattr(out, "num_cached_tokens", None)
    return int(cached) if cached is not None else None


__all__ = ["AsyncVLLMEngine", "EngineError"]
