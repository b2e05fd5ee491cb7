"""llama.cpp in process (``backend="llamacpp"``): llama.cpp's own server, run by the ``xllamacpp`` wheel.

It loads a GGUF file directly (the embedded Gemma 270M, any ``.gguf`` path): no conversion, no float32 copy.
Requests go in process through ``Server.handle_completions`` (no HTTP on the hot path); only tokenizing,
chat-template rendering and slot save/restore use the server's HTTP endpoints, on 127.0.0.1 and a free
port chosen by the OS, behind a key only this process knows. Every request is a completion over token
ids that we tokenized, so ``render`` is exactly what the model sees and token counts are exact;
``cached_tokens`` is llama.cpp's own ``timings.cache_n`` (None when a request was cut off before it
reported).

Guarantees:
- Batching: llama.cpp decodes its busy slots together (continuous batching), across concurrent
  ``generate`` calls too (``concurrent_calls``: the scheduler hands over each gathered batch at once, so
  a sweep's runs share decode steps instead of waiting for each other's calls to end). Which slot runs
  which request is the pure planner's decision (``llamacpp_plan.SlotPlanner``): a conversation's next
  turn returns to the slot holding it; siblings sharing a prefix get it computed once and copied into
  their slots (``share_prefix``; llama-server's default computes it once per slot), and so do requests
  of concurrent calls that start alike (the runs of a sweep share their system prompt).
- Stopping: a request stops within one prompt batch or one decoded token after its ``cancel`` event is
  set (the scheduler sets it when every caller waiting on the request has gone: a cancelled run, a
  client that disconnected, a timed-out caller), after ``deadline`` passes, or when ``close()`` is
  called. Prompt batches are sized so that one takes well under a second of a CPU core
  (``llamacpp_plan.prompt_batch``; a card may choose bigger ones, as the quality card's 64 tokens, about
  1.2 s on two cores, for a third more prompt throughput), and streams report progress after each batch,
  so prompt processing stops too. A stopped request fails with the work done so far in its usage.
- Greedy outputs: llama.cpp's logits are not bit-identical across different batch compositions and
  prompt-processing splits (its README says so of ``cache_prompt``), so on a near-tie a request may pick
  another token in a batch, or over a cached prefix, than alone.

Settings follow ``llamacpp_plan.resolve_settings``: explicit arguments beat the model card's
``[llamacpp]`` section, which beats the defaults. Why the defaults are what they are (slots, threads,
prompt batches, the ceiling of llama.cpp's own batching on a CPU) is in scripts/results/profile_llamacpp.md,
with the numbers beside it (``profile_llamacpp.json``, ``bench_engines.json``).

xllamacpp is an optional extra (``pip install 'rlm-local[llamacpp]'``) and is imported only here.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..errors import logger as _root_logger
from .base import Engine, EngineError, Request, Result, SamplingParams, Usage
from .llamacpp_plan import LlamaSettings, SlotPlanner, Task, file_size, resolve_settings
from .tokens import adds_bos, chat_without_template
from .tokens import prompt_format as resolve_format

logger = _root_logger.getChild("engines.llamacpp")

INSTALL_HINT = "the llamacpp backend needs `pip install 'rlm-local[llamacpp]'`"
HTTP_TIMEOUT_S = 120.0
POLL_S = 0.05  # how often a waiting call looks for cancelled or expired requests that have not started
CLOSE_WAIT_S = 60.0


@dataclass(eq=False)
class _Call:
    """One ``generate`` call: its results, when to stop and the warm-ups done for its sibling groups."""

    results: list[Result | None]
    deadline: float | None
    cancel: Sequence[threading.Event] | None
    warm: dict[int, tuple[int, float]] = field(default_factory=dict)  # group -> (tokens computed, seconds)
    members: dict[int, list[int]] = field(default_factory=dict)  # group -> request indices

    def stop_reason(self, index: int | None, closing: bool) -> str | None:
        """Why request ``index`` (None: every request of a group) must stop now, or None."""
        if closing:
            return "engine closed"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "stopped at the deadline"
        if self.cancel is not None and index is not None and self.cancel[index].is_set():
            return "cancelled"
        return None


@dataclass(eq=False)
class _Job:
    call: _Call
    index: int
    sampling: SamplingParams


class LlamaCppEngine(Engine):
    backend = "llamacpp"
    supports_deadline = True  # requests are streamed; a stream past the deadline is stopped
    supports_cancel = True
    supports_grammar = True  # llama.cpp's GBNF grammars

    def __init__(
        self,
        model_name: str | None = None,
        threads: int | None = None,
        batch_threads: int | None = None,
        n_parallel: int | None = None,
        min_parallel: int | None = None,
        context_length: int | None = None,
        cache_ram_mib: int | None = None,
        share_prefix: bool = True,
        min_prefix_tokens: int = 64,
        prompt_format: str | None = None,
        progress: Callable[[str], None] | None = None,
        **params: Any,
    ) -> None:
        """``model_name``: a registered packaged model (``gemma-3-270m``, the default) or a ``.gguf`` path.
        ``n_parallel`` slots of ``context_length`` tokens each (``min_parallel``: at least that many, when
        ``n_parallel`` is not given); ``threads`` for single-stream decoding,
        ``batch_threads`` for prompt processing and multi-slot decode steps; ``cache_ram_mib`` host-RAM
        prompt cache; ``share_prefix`` computes a prefix shared by at least two requests, of one call or
        of concurrent ones (>= ``min_prefix_tokens`` tokens), once and copies it into their slots. ``params`` set further
        ``xllamacpp.CommonParams`` fields (``n_batch``, ``n_ubatch``, ``swa_full``...). Anything left
        unset comes from the model card's ``[llamacpp]`` section, then from the defaults."""
        from ..models import ModelLoadError, gguf_string, resolve_gguf

        self._server: Any = None
        resolve_format(prompt_format, None, True)  # a bad value fails before anything loads
        if min_prefix_tokens < 1:
            raise EngineError("llamacpp: min_prefix_tokens must be >= 1")
        path, card = resolve_gguf(model_name, progress)  # before xllamacpp: a wrong name fails in ms
        try:
            import xllamacpp
        except Exception as exc:
            raise EngineError(f"{INSTALL_HINT}: {type(exc).__name__}: {exc}") from exc
        explicit = dict(
            n_parallel=n_parallel,
            min_parallel=min_parallel,
            context_length=context_length,
            threads=threads,
            batch_threads=batch_threads,
            cache_ram_mib=cache_ram_mib,
        )
        try:
            settings = resolve_settings(explicit, card.extra.get("llamacpp") if card else None, params, file_size(path))
        except (TypeError, ValueError) as exc:
            raise EngineError(f"llamacpp: {exc}") from None
        self.settings = settings
        self.model_name = card.name if card else str(path)
        self.card = card
        self.model_path = path
        self.threads, self.batch_threads, self.n_parallel = (
            settings.threads,
            settings.batch_threads,
            settings.n_parallel,
        )
        self.concurrent_calls = settings.n_parallel
        self.share_prefix = share_prefix
        self.min_prefix_tokens = min_prefix_tokens
        self._slot_dir = tempfile.mkdtemp(prefix="rlm-llamacpp-slots-")
        self._api_key = secrets.token_hex(16)
        started = time.perf_counter()
        try:
            self._server = xllamacpp.Server(self._common_params(xllamacpp, settings, path))
        except EngineError:
            shutil.rmtree(self._slot_dir, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(self._slot_dir, ignore_errors=True)
            raise ModelLoadError(
                f"llama.cpp could not load {path} ({type(exc).__name__}: {exc}); check that it is a "
                "complete GGUF model (a packaged model's file is rebuilt once deleted) and that "
                "context_length * n_parallel fits in memory"
            ) from exc
        self.load_seconds = time.perf_counter() - started
        url = urlparse(self._server.listening_address)
        self._host, self._port = url.hostname or "127.0.0.1", int(url.port or 0)
        self._closing = False
        self._cond = threading.Condition()  # guards the planner, the running count and every call's results
        self._planner = SlotPlanner(settings.n_parallel, min_prefix_tokens, share_prefix)
        self._running = 0
        try:
            props = self._post("/props", None)
            self.context_length = int(props.get("default_generation_settings", {}).get("n_ctx") or 0)
            self.context_length = self.context_length or settings.context_length
            self._bos_text = props.get("bos_token") or None
            self.chat_template = gguf_string(path, "tokenizer.chat_template")
            self._arch = gguf_string(path, "general.architecture") or ""
        except Exception:
            self.close()
            raise
        card_format = card.prompt_format if card else None
        self.prompt_format = resolve_format(prompt_format, card_format, bool(self.chat_template))  # type: ignore[assignment]

    def _common_params(self, xllamacpp: Any, settings: LlamaSettings, path: Any) -> Any:
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.n_parallel = settings.n_parallel
        p.n_ctx = settings.n_parallel * settings.context_length
        p.cpuparams.n_threads = settings.threads
        p.cpuparams_batch.n_threads = settings.batch_threads
        p.cache_ram_mib = settings.cache_ram_mib
        p.slot_save_path = self._slot_dir
        p.hostnames = ["127.0.0.1"]
        p.api_keys = [self._api_key]  # the side channel's /slots endpoints write files: no other local caller
        p.port = 0  # the OS picks a free port
        p.verbosity = 0
        p.warmup = False
        for name, value in settings.params.items():
            if not hasattr(p, name):
                raise EngineError(f"llamacpp: unknown llama.cpp parameter {name!r} (see xllamacpp.CommonParams)")
            setattr(p, name, value)
        return p

    # ---- HTTP side channel (tokenize, templates, slot files) ------------------------------------------------
    def _post(self, path: str, body: dict | None) -> dict:
        if self._server is None:
            raise EngineError("llamacpp: engine is closed")
        conn = http.client.HTTPConnection(self._host, self._port, timeout=HTTP_TIMEOUT_S)
        try:
            auth = {"Authorization": f"Bearer {self._api_key}"}
            if body is None:
                conn.request("GET", path, headers=auth)
            else:
                conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **auth})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status != 200:
            raise EngineError(f"llamacpp {path}: HTTP {resp.status}: {_error_text(data)}")
        return data

    # ---- prompts ----------------------------------------------------------------------------------------------
    def render(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        messages = [dict(m) for m in request.messages or ()]
        if self.chat_template:  # the GGUF's own template, rendered by llama.cpp itself
            return self._post("/apply-template", {"messages": messages})["prompt"]
        return chat_without_template(messages, self._arch, self.model_name)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, add_special=False)) if text else 0

    def _tokenize(self, text: str, add_special: bool | None = None) -> list[int]:
        special = adds_bos(text, self._bos_text) if add_special is None else add_special
        body = {"content": text, "add_special": special, "parse_special": True}
        return list(self._post("/tokenize", body)["tokens"])

    # ---- generation -------------------------------------------------------------------------------------------
    def generate(
        self,
        requests: list[Request],
        deadline: float | None = None,
        cancel: Sequence[threading.Event] | None = None,
    ) -> list[Result]:
        """Run ``requests`` on the slots (with those of concurrent calls). ``cancel``: one event per request;
        setting it stops that request (see the module doc)."""
        call = _Call([None] * len(requests), deadline, cancel)
        ids: list[list[int]] = []
        jobs: list[_Job] = []
        for i, req in enumerate(requests):
            try:
                tokens = self._tokenize(self.rendered(req))
                if len(tokens) >= self.context_length:
                    raise EngineError(
                        f"prompt of {len(tokens)} tokens does not fit the slot context of "
                        f"{self.context_length} tokens (raise context_length)"
                    )
            except Exception as exc:  # this request only
                call.results[i] = Result.failed(f"llamacpp: {type(exc).__name__}: {exc}")
                continue
            ids.append(tokens)
            jobs.append(_Job(call, i, req.sampling))
        with self._cond:
            if self._closing or self._server is None:
                return [r or _not_started("engine is closed") for r in call.results]
            tasks, warms = self._planner.add(ids, jobs)
            for w in warms:
                w.payload = call
                call.members[w.group] = [t.payload.index for t in tasks if t.group == w.group]  # type: ignore[index]
            self._start(self._planner.dispatch())
            self._wait(call, tasks)
        self._account_warm(call)
        return [r or Result.failed("llamacpp: internal error: no result") for r in call.results]

    def _wait(self, call: _Call, tasks: list[Task]) -> None:
        """Wait (holding the condition) until every task of ``call`` has a result; answers the ones that are
        stopped before a slot took them."""
        waiting = list(tasks)
        while waiting:
            for t in list(waiting):
                job: _Job = t.payload
                if call.results[job.index] is not None:
                    waiting.remove(t)
                elif t in self._planner.pending and (why := call.stop_reason(job.index, self._closing)):
                    self._forget(self._planner.drop(t))
                    call.results[job.index] = _not_started(why)
                    waiting.remove(t)
            if waiting:
                left = None if call.deadline is None else call.deadline - time.monotonic()
                self._cond.wait(POLL_S if left is None else max(0.001, min(POLL_S, left)))

    def _start(self, assignments: list[tuple[int, Task]]) -> None:
        """Run each (slot, task) on a thread of its own (called holding the condition)."""
        for s, task in assignments:
            self._running += 1
            threading.Thread(target=self._execute, args=(s, task), name=f"llamacpp-slot-{s}", daemon=True).start()

    def _execute(self, s: int, task: Task) -> None:
        ok = False
        try:
            ok = self._warm(s, task) if task.warm else self._run(s, task)
        except Exception as exc:  # a bug here must not leave the call waiting
            logger.exception("llamacpp: slot %d failed", s)
            if not task.warm:
                job: _Job = task.payload
                with self._cond:
                    job.call.results[job.index] = Result.failed(f"llamacpp: {type(exc).__name__}: {exc}")
        finally:
            with self._cond:
                self._forget(self._planner.finished(s, task, ok))
                self._running -= 1
                if not self._closing:
                    self._start(self._planner.dispatch())
                self._cond.notify_all()

    def _forget(self, group: int | None) -> None:
        if group is not None:
            try:
                os.unlink(os.path.join(self._slot_dir, f"g{group}.bin"))
            except OSError:
                pass

    def _run(self, s: int, task: Task) -> bool:
        job: _Job = task.payload
        call = job.call
        if why := call.stop_reason(job.index, self._closing):
            result = _not_started(why)
        else:
            if task.restore:
                self._post(f"/slots/{s}?action=restore", {"filename": f"g{task.group}.bin"})
                with self._cond:
                    self._planner.restored(s, task)
            result = self._complete(task.ids, job.sampling, s, lambda: call.stop_reason(job.index, self._closing))
        with self._cond:
            call.results[job.index] = result
        return result.ok

    def _warm(self, s: int, task: Task) -> bool:
        """Compute a group's prefix in slot ``s`` and save the slot's state to a file its siblings restore."""
        call: _Call = task.payload  # the call whose request made the group (it is charged the work)

        def stop() -> str | None:  # only when every request waiting on the prefix, of any call, is gone
            with self._cond:
                jobs: list[_Job] = [t.payload for t in self._planner.members(task.group)]
                reasons = [j.call.stop_reason(j.index, self._closing) for j in jobs]
            if not jobs:
                return "every request sharing the prefix left"
            return reasons[0] if all(reasons) else None

        started = time.perf_counter()
        result = self._complete(task.ids, SamplingParams(), s, stop, max_tokens=0)
        if not result.ok:  # a stop (nobody waits for the prefix any more) is no fault: only a failure warns
            log = logger.debug if stop() else logger.warning
            log("llamacpp: could not share a %d-token prefix: %s", len(task.ids), result.error)
            return False
        self._post(f"/slots/{s}?action=save", {"filename": f"g{task.group}.bin"})
        computed = result.usage.prompt_tokens - (result.usage.cached_tokens or 0)
        with self._cond:
            call.warm[task.group] = (computed, time.perf_counter() - started)  # type: ignore[index]
        return True

    def _account_warm(self, call: _Call) -> None:
        """The first sibling that succeeded owns the prefix work its group's warm-up did."""
        for g, (computed, seconds) in call.warm.items():
            first = next((call.results[i] for i in call.members.get(g, []) if call.results[i].ok), None)  # type: ignore[union-attr]
            if first is not None:
                if first.usage.cached_tokens is not None:
                    first.usage.cached_tokens = max(0, first.usage.cached_tokens - computed)
                first.usage.seconds += seconds

    def _complete(
        self,
        ids: list[int],
        sampling: SamplingParams,
        slot: int,
        stop: Callable[[], str | None],
        max_tokens: int | None = None,
    ) -> Result:
        body: dict[str, Any] = {
            "prompt": ids,
            "max_tokens": sampling.max_tokens if max_tokens is None else max_tokens,
            "cache_prompt": True,
            "id_slot": slot,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_progress": True,  # a chunk after each prompt batch: a stop is seen during prompt processing
            "temperature": max(0.0, sampling.temperature),
            "top_k": 0,
            "min_p": 0.0,
            "top_p": 1.0 if sampling.greedy else sampling.top_p,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.grammar:
            body["grammar"] = sampling.grammar
        pieces: list[str] = []
        state: dict[str, Any] = {}

        def on_chunk(chunk: Any) -> bool:
            if isinstance(chunk, (str, bytes)):
                chunk = json.loads(chunk)
            if "error" in chunk:
                state["error"] = _error_text(chunk)
                return True
            for choice in chunk.get("choices") or ():
                pieces.append(choice.get("text") or "")
                if choice.get("finish_reason"):
                    state["finish"] = choice["finish_reason"]
            if "usage" in chunk:
                state["usage"], state["timings"] = chunk["usage"], chunk.get("timings", {})
                return False
            if why := stop():
                state["stopped"] = why
                return True  # llama.cpp cancels the task when the stream is dropped
            return False

        started = time.perf_counter()
        returned = self._server.handle_completions(body, on_chunk)
        if isinstance(returned, dict) and "error" in returned:  # refused before streaming started
            state["error"] = _error_text(returned)
        seconds = time.perf_counter() - started
        if "error" in state:
            return Result.failed(f"llamacpp: {state['error']}")
        if "usage" not in state:  # cut off: the work done is counted, the partial text is not returned
            return Result(
                text="",
                finish_reason="error",
                error=f"llamacpp: {state.get('stopped', 'stream ended without a result')}",
                usage=Usage(
                    calls=1, prompt_tokens=len(ids), cached_tokens=None, completion_tokens=len(pieces), seconds=seconds
                ),
            )
        usage, timings = state["usage"], state["timings"]
        cached = timings.get("cache_n")
        return Result(
            text="".join(pieces),
            finish_reason="length" if state.get("finish") == "length" else "stop",
            usage=Usage(
                calls=1,
                prompt_tokens=int(usage.get("prompt_tokens", len(ids))),
                cached_tokens=int(cached) if cached is not None else None,
                completion_tokens=int(usage.get("completion_tokens", 0)),
                seconds=seconds,
            ),
        )

    def close(self) -> None:
        """Stop requests in flight (each within a prompt batch or a token) and queued ones, stop llama.cpp's
        loop and HTTP threads (freeing the port) and delete the slot files. Safe to call twice."""
        if getattr(self, "_server", None) is None:
            return
        self._closing = True
        cond = getattr(self, "_cond", None)
        if cond is not None:
            end = time.monotonic() + CLOSE_WAIT_S
            with cond:
                cond.notify_all()  # waiting calls answer their queued requests "engine closed"
                while self._running and time.monotonic() < end:
                    cond.wait(POLL_S)
                if self._running:  # freeing the server under a running request would crash the process
                    logger.warning(
                        "llamacpp: close() gave up waiting for %d requests; the server stays up", self._running
                    )
                    return
        server, self._server = self._server, None
        del server  # the destructor terminates the server loop and joins its threads (the port is freed)
        shutil.rmtree(self._slot_dir, ignore_errors=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _not_started(why: str) -> Result:
    """A request that no slot ran: no engine work to count."""
    return Result(text="", finish_reason="error", error=f"llamacpp: {why} before it started", usage=Usage(calls=0))


def _error_text(data: Any) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err or data)[:500]
