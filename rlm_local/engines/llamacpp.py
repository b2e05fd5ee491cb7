"""llama.cpp in process (``backend="llamacpp"``): llama.cpp's own server, run by the ``xllamacpp`` wheel.

It loads a GGUF file directly (the embedded Gemma 270M, any ``.gguf`` path): no conversion, no float32 copy.
Requests go in process through ``Server.handle_completions`` (no HTTP on the hot path); only tokenizing,
chat-template rendering and slot save/restore use the server's HTTP endpoints, on 127.0.0.1 and a free
port chosen by the OS. Every request is a completion over token ids that we tokenized, so ``render`` is
exactly what the model sees and token counts are exact. llama.cpp decodes its parallel slots together
(continuous batching) and keeps each slot's KV for the next request (the prompt cache); ``cached_tokens``
is llama.cpp's own ``timings.cache_n`` (None when a request was cut off before it reported).

Shared-prefix siblings (measured 2026-11-30 on the shared 2-core box, one thread, embedded GGUF; 8 siblings
over one NEW ~1,500-token chunk, 32 new tokens each, ``scripts/bench_llamacpp.py``): llama-server's default
gives each concurrent request its own slot and computes the chunk once per slot (``cache_n = 0`` on all 8:
199 s, 12,392 prompt tokens evaluated). Warming the prefix first does not fix that (only the warmed slot
reuses it); ``kv_unified`` does not share a sequence between slots; the host-RAM prompt cache
(``cache_ram``) hands a saved prefix to one empty slot and drops it (a move, not a copy); siblings one by
one in one slot (``n_parallel=1``) compute the prefix once too but decode one sequence at a time (about
3 s per sibling at 32 tokens). What works, and is
the default (``share_prefix=True``): compute the common token prefix once (``max_tokens=0`` into one slot),
save that slot's state to a file and restore it into every slot a sibling uses (~10 ms each), then run the
siblings in parallel, each pinned to its slot: 23.7 s, 1,634 prompt tokens evaluated (8.4x faster; a
second run 27.5 s vs 157 s, 5.7x).

Greedy outputs: llama.cpp's logits are not bit-identical across different prompt-processing splits (its
README says so of ``cache_prompt``), so a request whose prefix came from a cache may, on a near-tie, pick
another token than the same request computed cold. Requests without a shared prefix give the same text
in a batch as one by one.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..errors import logger as _root_logger
from .base import Engine, EngineError, Request, Result, SamplingParams, Usage
from .templates import gemma_turns

logger = _root_logger.getChild("engines.llamacpp")

INSTALL_HINT = "the llamacpp backend needs `pip install 'rlm-local[llamacpp]'`"
DEFAULT_SLOT_CONTEXT = 8192  # tokens per slot: the embedded card keeps root prompts under 6,000
HTTP_TIMEOUT_S = 120.0


def default_threads() -> int:
    """Decode threads. One on small machines: on a loaded 2-core box two threads collapsed single-stream decode
    to ~0.5 tok/s, one gave 5.7 (engines.md)."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(cores, 8)


def default_batch_threads() -> int:
    """Threads for batches (prompt processing, and decode steps of several slots at once): every core, up to 8.
    Unlike single-stream decode this work is compute-bound: 8 siblings over a cold 1,413-token prefix took
    15.0-17.3 s with one thread and 10.3-11.1 s with two on the 2-core box, with another process busy on
    one core (2026-11-30)."""
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass
class _Slot:
    tokens: list[int] = field(default_factory=list)  # the prompt it last held (what llama.cpp may reuse)
    fresh_group: int | None = None  # holds exactly this group's prefix, never extended since
    used: float = 0.0


@dataclass
class _Task:
    index: int
    ids: list[int]
    sampling: SamplingParams
    group: int | None = None
    prefer: int | None = None  # the slot already holding most of this prompt (singletons only)
    held: int = 0  # how many leading tokens of it that slot holds


class LlamaCppEngine(Engine):
    backend = "llamacpp"
    supports_deadline = True  # requests are streamed; a stream past the deadline is stopped
    supports_grammar = True  # llama.cpp's GBNF grammars

    def __init__(
        self,
        model_name: str | None = None,
        threads: int | None = None,
        batch_threads: int | None = None,
        n_parallel: int = 8,
        context_length: int | None = None,
        cache_ram_mib: int = 1024,
        share_prefix: bool = True,
        min_prefix_tokens: int = 64,
        prompt_format: str | None = None,
        progress: Callable[[str], None] | None = None,
        **params: Any,
    ) -> None:
        """``model_name``: a registered packaged model (``gemma-3-270m``, the default) or a ``.gguf`` path.
        ``n_parallel`` slots of ``context_length`` tokens each (default: the card's ``[llamacpp]`` section,
        else 8,192); ``threads`` for single-stream decoding (default 1 on <= 2 cores), ``batch_threads`` for
        prompt processing and multi-slot decode steps (default: every core, up to 8);
        ``cache_ram_mib`` host-RAM prompt cache; ``share_prefix`` computes a prefix shared by at least two
        requests of one call (>= ``min_prefix_tokens`` tokens) once and copies it into their slots.
        ``params`` set further ``xllamacpp.CommonParams`` fields (``n_batch``, ``n_ubatch``, ``swa_full``...)."""
        from ..models import ModelLoadError, gguf_string, resolve_gguf

        path, card = resolve_gguf(model_name, progress)  # before xllamacpp: a wrong name fails in ms
        try:
            import xllamacpp
        except Exception as exc:
            raise EngineError(f"{INSTALL_HINT}: {type(exc).__name__}: {exc}") from exc
        section = dict(card.extra.get("llamacpp", {})) if card else {}
        n_parallel = int(section.pop("n_parallel", n_parallel))
        slot_ctx = int(context_length or section.pop("context_length", 0) or DEFAULT_SLOT_CONTEXT)
        section.update(params)
        if n_parallel < 1 or slot_ctx < 16 or min_prefix_tokens < 1:
            raise EngineError("llamacpp: n_parallel, context_length and min_prefix_tokens must be positive")
        self.model_name = card.name if card else str(path)
        self.card = card
        self.model_path = path
        self.threads = max(1, int(threads or default_threads()))
        self.n_parallel = n_parallel
        self.share_prefix = share_prefix
        self.min_prefix_tokens = min_prefix_tokens
        self._slot_dir = tempfile.mkdtemp(prefix="rlm-llamacpp-slots-")
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.n_parallel = n_parallel
        p.n_ctx = n_parallel * slot_ctx
        p.cpuparams.n_threads = self.threads
        self.batch_threads = max(1, int(batch_threads or default_batch_threads()))
        p.cpuparams_batch.n_threads = self.batch_threads
        p.cache_ram_mib = cache_ram_mib
        p.slot_save_path = self._slot_dir
        p.hostnames = ["127.0.0.1"]
        # The side channel listens on loopback, but other local users must not drive it (its /slots endpoints
        # write files): a key only this process knows.
        self._api_key = secrets.token_hex(16)
        p.api_keys = [self._api_key]
        p.port = 0  # the OS picks a free port
        p.verbosity = 0
        p.warmup = False
        for name, value in section.items():
            if not hasattr(p, name):
                shutil.rmtree(self._slot_dir, ignore_errors=True)
                raise EngineError(f"llamacpp: unknown llama.cpp parameter {name!r} (see xllamacpp.CommonParams)")
            setattr(p, name, value)
        started = time.perf_counter()
        try:
            self._server: Any = xllamacpp.Server(p)
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
        self._lock = threading.Lock()  # one generate at a time: its plan owns every slot
        self._slots = [_Slot() for _ in range(n_parallel)]
        try:
            props = self._post("/props", None)
            self.context_length = int(props.get("default_generation_settings", {}).get("n_ctx") or slot_ctx)
            self.chat_template = gguf_string(path, "tokenizer.chat_template")
            self._arch = gguf_string(path, "general.architecture") or ""
            self._bos = self._post("/tokenize", {"content": "", "add_special": True}).get("tokens", [])[:1]
        except Exception:
            self.close()
            raise
        self.prompt_format = (
            prompt_format
            or (card.prompt_format if card else None)  # type: ignore[assignment]
            or ("chat" if self.chat_template else "completion")
        )

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
        if self._arch.startswith("gemma"):
            return gemma_turns(messages)
        return super().render(request)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, add_special=False)) if text else 0

    def _tokenize(self, text: str, add_special: bool = True) -> list[int]:
        ids = list(
            self._post("/tokenize", {"content": text, "add_special": add_special, "parse_special": True})["tokens"]
        )
        if add_special and self._bos and ids[:2] == self._bos * 2:
            ids = ids[1:]  # a template that writes BOS itself must not get a second one
        return ids

    # ---- generation -------------------------------------------------------------------------------------------
    def generate(self, requests: list[Request], deadline: float | None = None) -> list[Result]:
        with self._lock:
            return self._generate_locked(requests, deadline)

    def _generate_locked(self, requests: list[Request], deadline: float | None) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        tasks: list[_Task] = []
        for i, req in enumerate(requests):
            try:
                ids = self._tokenize(self.rendered(req))
                if len(ids) >= self.context_length:
                    raise EngineError(
                        f"prompt of {len(ids)} tokens does not fit the slot context of "
                        f"{self.context_length} tokens (raise context_length)"
                    )
            except Exception as exc:  # this request only
                results[i] = Result.failed(f"llamacpp: {type(exc).__name__}: {exc}")
                continue
            tasks.append(_Task(i, ids, req.sampling))
        for t in tasks:
            t.prefer, t.held = self._best_slot(t.ids)
        prefixes = self._group(tasks) if self.share_prefix else {}
        warm: dict[int, dict] = {}
        for g, prefix in prefixes.items():
            try:
                warm[g] = self._warm(g, prefix, deadline)
            except Exception as exc:  # the siblings still run, each computing its own prompt
                logger.warning("llamacpp: could not share a %d-token prefix: %s", len(prefix), exc)
                for t in tasks:
                    if t.group == g:
                        t.group = None
        for t in tasks:
            if t.group is not None:
                t.prefer = None
        self._run(tasks, results, prefixes, deadline)
        for g, info in warm.items():  # the first sibling owns the prefix work the warm-up did
            first = next(
                (t.index for t in tasks if t.group == g and (res := results[t.index]) is not None and res.ok), None
            )
            if first is not None:
                u = results[first].usage  # type: ignore[union-attr]
                if u.cached_tokens is not None:
                    u.cached_tokens = max(0, u.cached_tokens - info["computed"])
                u.seconds += info["seconds"]
            try:
                os.unlink(os.path.join(self._slot_dir, f"g{g}.bin"))
            except OSError:
                pass
        return [r if r is not None else Result.failed("llamacpp: internal error: no result") for r in results]

    def _group(self, tasks: list[_Task]) -> dict[int, list[int]]:
        """Clusters of >= 2 tasks whose token prompts share >= min_prefix_tokens; returns group -> prefix
        (the common prefix, at least one token short of the shortest member so each has work of its own).
        A task whose slot already holds more of it than the group would share stays out, on its slot: root
        turns of concurrent runs share the system prompt, but each run's slot holds its whole conversation
        (grouped, turn 2 of two runs reused 120 of 650 tokens and took 19 s; on their own slots, 653)."""
        order = sorted(tasks, key=lambda t: t.ids)
        groups: dict[int, list[int]] = {}
        run: list[_Task] = []
        shared = 0

        def close_run() -> None:
            if len(run) >= 2:
                length = min(shared, min(len(t.ids) for t in run) - 1)
                members = [t for t in run if t.held <= length]
                if length >= self.min_prefix_tokens and len(members) >= 2:
                    g = len(groups)
                    groups[g] = members[0].ids[:length]
                    for t in members:
                        t.group = g

        for t in order:
            lcp = _common_prefix(run[-1].ids, t.ids) if run else 0
            if run and lcp >= self.min_prefix_tokens:
                shared = min(shared, lcp) if len(run) > 1 else lcp
                run.append(t)
            else:
                close_run()
                run, shared = [t], 0
        close_run()
        return groups

    def _best_slot(self, ids: list[int]) -> tuple[int | None, int]:
        """The slot holding the longest prefix of ``ids`` (at least min_prefix_tokens), and its length."""
        best, best_len = None, self.min_prefix_tokens - 1
        for s, slot in enumerate(self._slots):
            n = _common_prefix(slot.tokens, ids)
            if n > best_len:
                best, best_len = s, n
        return best, (best_len if best is not None else 0)

    def _warm(self, g: int, prefix: list[int], deadline: float | None) -> dict:
        """Compute ``prefix`` once in one slot and save that slot's state to a file the siblings restore."""
        if deadline is not None and time.monotonic() >= deadline:
            raise EngineError("deadline passed")
        s = self._best_slot(prefix)[0]
        if s is None:
            s = min(range(len(self._slots)), key=lambda i: self._slots[i].used)
        started = time.perf_counter()
        out = self._server.handle_completions(
            {"prompt": prefix, "max_tokens": 0, "temperature": 0.0, "cache_prompt": True, "id_slot": s}
        )
        if "error" in out:
            raise EngineError(_error_text(out))
        self._post(f"/slots/{s}?action=save", {"filename": f"g{g}.bin"})
        self._slots[s] = _Slot(list(prefix), g, time.monotonic())
        return {"computed": int(out.get("timings", {}).get("prompt_n", 0)), "seconds": time.perf_counter() - started}

    def _run(
        self, tasks: list[_Task], results: list[Result | None], prefixes: dict[int, list[int]], deadline: float | None
    ) -> None:
        """One worker per slot takes tasks until none is left: its preferred singletons first, then siblings
        of a prefix it holds, then any sibling (restoring the group's prefix file first), then the rest."""
        pending = list(tasks)
        pick_lock = threading.Lock()

        def pick(s: int) -> _Task | None:
            with pick_lock:
                fresh = self._slots[s].fresh_group
                # Last, anything left: a task waiting for its preferred slot while this one idles would run the
                # batch one by one (4 siblings on one slot took the sum of their times).
                for rank in (
                    lambda t: t.prefer == s,
                    lambda t: t.group is not None and t.group == fresh,
                    lambda t: t.group is not None,
                    lambda t: t.group is None and t.prefer is None,
                    lambda t: True,
                ):
                    for t in pending:
                        if rank(t):
                            pending.remove(t)
                            return t
                return None

        def worker(s: int) -> None:
            while (t := pick(s)) is not None:
                try:
                    if t.group is not None and self._slots[s].fresh_group != t.group:
                        self._post(f"/slots/{s}?action=restore", {"filename": f"g{t.group}.bin"})
                        self._slots[s] = _Slot(list(prefixes[t.group]), t.group, time.monotonic())
                    results[t.index] = self._complete(t.ids, t.sampling, s, deadline)
                except Exception as exc:  # this request only
                    results[t.index] = Result.failed(f"llamacpp: {type(exc).__name__}: {exc}")
                self._slots[s] = _Slot(list(t.ids), None, time.monotonic())

        # Fewer tasks than slots: the slots some task prefers first, then ones holding a fresh prefix, then LRU.
        wanted = {t.prefer for t in tasks if t.prefer is not None}
        order = sorted(
            range(len(self._slots)),
            key=lambda s: (s not in wanted, self._slots[s].fresh_group is None, self._slots[s].used),
        )
        workers = [
            threading.Thread(target=worker, args=(s,), name=f"llamacpp-slot-{s}", daemon=True)
            for s in order[: len(tasks)]
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def _complete(self, ids: list[int], sampling: SamplingParams, slot: int, deadline: float | None) -> Result:
        body: dict[str, Any] = {
            "prompt": ids,
            "max_tokens": sampling.max_tokens,
            "cache_prompt": True,
            "id_slot": slot,
            "stream": True,
            "stream_options": {"include_usage": True},
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
        state: dict[str, Any] = {"stopped": False}

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
            if self._closing or (deadline is not None and time.monotonic() >= deadline and "usage" not in state):
                state["stopped"] = True
                return True
            return False

        started = time.perf_counter()
        if deadline is not None and time.monotonic() >= deadline:
            return Result.failed("llamacpp: stopped at the deadline before it started")
        returned = self._server.handle_completions(body, on_chunk)
        if isinstance(returned, dict) and "error" in returned:  # refused before streaming started
            state["error"] = _error_text(returned)
        seconds = time.perf_counter() - started
        if "error" in state:
            return Result.failed(f"llamacpp: {state['error']}")
        if "usage" not in state:  # cut off: the work done is counted, the partial text is not returned
            why = "engine closed" if self._closing else "stopped at the deadline"
            return Result(
                text="",
                finish_reason="error",
                error=f"llamacpp: {why}",
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
        """Stop streams in flight, stop llama.cpp's loop and HTTP threads (freeing the port), delete slot files."""
        if getattr(self, "_server", None) is None:
            return
        self._closing = True
        if not self._lock.acquire(timeout=60):  # a prompt still being processed: freeing it now would crash
            logger.warning("llamacpp: close() gave up waiting for a generate call; the server stays up")
            return
        try:
            server, self._server = self._server, None
            del server  # the destructor terminates the server loop and joins its threads (the port is freed)
        finally:
            self._lock.release()
        shutil.rmtree(self._slot_dir, ignore_errors=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _error_text(data: Any) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err or data)[:500]
