"""Hugging Face transformers engine: CPU anywhere, CUDA when present. The embedded default model runs here.

Requests with equal sampling settings are generated together in left-padded batches (one forward pass
per token for the whole batch), which is where CPU throughput comes from (scripts/bench_engines.py and
scripts/results/bench_engines.json have the figures).

KV prefix reuse (on by default, see prefix_cache.py): siblings sharing a long prompt prefix (one chunk,
different questions) compute it once and decode as one batch over it; a bounded LRU keeps prefixes across
calls, so each turn of a growing root conversation only computes what the previous turn did not see.
Greedy outputs are identical to the no-reuse path; ``Usage.cached_tokens`` counts, per request, the prompt
tokens whose KV it did not compute itself (taken from the LRU or from a sibling).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import Engine, Request, Result, SamplingParams, Usage, generate_isolated
from .prefix import group_by_prefix
from .prefix_cache import (
    PrefixCache,
    PrefixKV,
    Stopped,
    batch_cache,
    extend_prefix,
    prefix_from_cache,
    supports_reuse,
)
from .tokens import adds_bos, chat_without_template, default_threads
from .tokens import gemma_turns as gemma_turns  # re-exported: older imports use hf.gemma_turns
from .tokens import prompt_format as resolve_format


class TransformersEngine(Engine):
    backend = "transformers"
    supports_deadline = True  # generate(max_time=...) stops decoding at the deadline
    supports_cancel = True  # a row stops at the next decode step; prompts are computed in stoppable chunks

    def __init__(
        self,
        model_name: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        max_batch: int = 32,
        progress: Callable[[str], None] | None = None,
        prefix_cache: bool = True,
        prefix_cache_size: int = 16,
        prefix_cache_bytes: int = 1 << 30,
        min_prefix_tokens: int = 64,
        prompt_format: str | None = None,
    ) -> None:
        """``prompt_format`` ("chat" or "completion") beats the model card's. ``prefix_cache`` turns KV prefix reuse on: siblings sharing at least ``min_prefix_tokens`` prompt
        tokens compute them once, and an LRU of at most ``prefix_cache_size`` entries and
        ``prefix_cache_bytes`` bytes keeps prefixes for later calls (the root conversation's next turn)."""
        from ..models import ModelLoadError, resolve_model_dir, set_offline

        cache = PrefixCache(prefix_cache_size, prefix_cache_bytes) if prefix_cache else None  # bad bounds fail fast
        resolve_format(prompt_format, None, True)  # a bad value fails before the model loads

        set_offline()
        model_dir, card = resolve_model_dir(model_name, progress)  # before torch: a wrong name fails in ms
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            torch.set_num_threads(threads or default_threads())
        self.model_name = card.name if card else str(model_name)
        self.card = card
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        started = time.perf_counter()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype)
            self.model.to(self.device).eval()  # type: ignore[arg-type]  # transformers types .to() as a wrapper taking a model
        except Exception as exc:
            raise ModelLoadError(f"could not load model from {model_dir}: {type(exc).__name__}: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self.tokenizer.padding_side = "left"  # decoder-only batching: pad on the left so all rows end together
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_batch = max(1, max_batch)
        # One generate at a time: the model, its KV buffers and the prefix cache are not thread-safe, and an
        # engine may be shared by several RLMs, the server and a direct caller.
        self._lock = threading.RLock()
        self.min_prefix_tokens = max(1, min_prefix_tokens)
        self.prefix_cache = cache if cache is not None and supports_reuse(self.model) else None
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.prompt_format = resolve_format(prompt_format, card.prompt_format if card else None, has_template)  # type: ignore[assignment]
        self.context_length = (card.context_length if card else 0) or int(
            getattr(self.model.config, "max_position_embeddings", 0) or 8192
        )

    # ---- prompt rendering -------------------------------------------------------------------------------
    def render(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        messages = list(request.messages or ())
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # type: ignore[return-value]  # a str with tokenize=False
        return chat_without_template(messages, getattr(self.model.config, "model_type", None), self.model_name)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---- generation -------------------------------------------------------------------------------------
    def generate(
        self, requests: list[Request], deadline: float | None = None, cancel: Sequence[threading.Event] | None = None
    ) -> list[Result]:
        """Run ``requests`` in left-padded batches. ``deadline`` and ``cancel`` (one event per request) stop
        work: a row whose event is set stops at the next decode step, and a batch whose rows are all stopped
        stops computing prompt prefixes within one chunk (``prefix_cache.STOPPABLE_CHUNK`` tokens)."""
        with self._lock:
            return self._generate_locked(requests, deadline, cancel)

    def _generate_locked(
        self, requests: list[Request], deadline: float | None, cancel: Sequence[threading.Event] | None
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        ids: dict[int, list[int]] = {}
        # Different sampling settings cannot share one generate() call; group, keeping input positions.
        groups: dict[SamplingParams, list[int]] = {}
        for i, req in enumerate(requests):
            try:
                ids[i] = self._tokenize(self.rendered(req))
            except Exception as exc:
                results[i] = Result.failed(f"transformers: could not render or tokenize: {type(exc).__name__}: {exc}")
                continue
            limit = self.context_length - req.sampling.max_tokens
            if len(ids[i]) > limit:
                results[i] = Result.failed(
                    f"transformers: prompt of {len(ids[i])} tokens plus max_tokens={req.sampling.max_tokens} "
                    f"exceeds the model's context of {self.context_length} tokens"
                )
                continue
            groups.setdefault(req.sampling, []).append(i)
        for sampling, indices in groups.items():
            if self.prefix_cache is not None:
                indices = sorted(indices, key=lambda i: ids[i])  # rows sharing a prefix land in one batch
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                batch = generate_isolated(
                    functools.partial(self._generate_batch, sampling=sampling, deadline=deadline),
                    [_Row(ids[i], cancel[i] if cancel is not None else None) for i in chunk],
                    "transformers",
                )
                for i, res in zip(chunk, batch):
                    results[i] = res
        return [r if r is not None else Result.failed("internal error: no result") for r in results]

    def _tokenize(self, text: str) -> list[int]:
        add_special = adds_bos(text, self.tokenizer.bos_token)
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def _generate_batch(
        self, batch: list[_Row], sampling: SamplingParams, deadline: float | None = None
    ) -> list[Result]:
        torch = self._torch
        started = time.perf_counter()
        rows = [r.ids for r in batch]
        stop = _batch_stop([r.cancel for r in batch], deadline)
        if why := stop():
            return [Result.failed(f"transformers: {why} before it started") for _ in rows]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        # Left padding: every row ends at the same slot, so one forward per token serves the whole batch.
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        try:
            plan = self._plan(rows, stop) if self.prefix_cache is not None else None
        except Stopped as exc:  # the prompt work done is counted, nothing was generated
            share = (time.perf_counter() - started) / len(rows)
            return [_cut(f"transformers: {exc}", len(r), 0, share) for r in rows]
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_tokens, pad_token_id=pad)
        keep_generated = plan is not None and plan.slots > 0 and len(rows) == 1
        if plan is not None and plan.slots > 0:
            gen_kwargs["past_key_values"] = batch_cache(
                self.model.config, plan.sources, plan.ends, plan.slots, record_past=keep_generated
            )
        if sampling.greedy:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            gen_kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=None)
        if sampling.stop:
            gen_kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if deadline is not None:
            gen_kwargs["max_time"] = max(0.01, deadline - time.monotonic())
        if any(r.cancel is not None for r in batch):
            gen_kwargs["stopping_criteria"] = _cancel_criteria(torch, [r.cancel for r in batch])
        with torch.inference_mode():
            # (transformers' types: generate rejects this model class as self, and may return a bare tensor; with
            # return_dict_in_generate it returns an output object)
            out: Any = self.model.generate(  # type: ignore[misc]
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                return_dict_in_generate=True,
                **gen_kwargs,
            )
        sequences = out.sequences.cpu()
        if keep_generated:
            self._store_generated(out.past_key_values, sequences[0])
        new_tokens = sequences[:, width:].tolist()
        elapsed = time.perf_counter() - started
        cached = plan.cached if plan is not None else [0] * len(rows)
        results = [
            self._decode(row, len(prompt), sampling, elapsed / len(rows), n_cached)
            for row, prompt, n_cached in zip(new_tokens, rows, cached)
        ]
        for r, row in zip(results, batch):  # cut short: the work is counted, not the text
            if row.cancel is not None and row.cancel.is_set():
                r.text, r.finish_reason, r.error = "", "error", "transformers: cancelled"
            elif deadline is not None and time.monotonic() >= deadline and r.finish_reason == "length":
                r.text, r.finish_reason, r.error = "", "error", "transformers: stopped at the deadline"
        return results

    # ---- prefix reuse -----------------------------------------------------------------------------------
    def _plan(self, rows: list[list[int]], stop: Callable[[], str | None]) -> _Plan:
        """Find (or compute) a cached prefix for every row and lay the batch out over them.

        Rows sharing a long prefix (siblings) share one source, computed once; a row alone gets its own
        prompt minus the last token as source, so the next turn of a growing conversation finds it. All
        sources are stored in the LRU. The batch then reuses the first ``slots`` positions: the longest
        uncached remainder decides how many tokens every row has to run through the model."""
        torch = self._torch
        tensors = [torch.tensor(r, dtype=torch.long) for r in rows]
        sources: list[PrefixKV | None] = [None] * len(rows)
        owners: dict[int, int] = {}  # row -> prefix tokens it got from earlier calls (it computed the rest)
        for members, shared in self._clusters(rows):
            length = min(shared, min(len(rows[i]) for i in members) - 1)
            if length < self.min_prefix_tokens:
                continue
            source, reused = self._source(tensors[members[0]][:length], stop)
            owners[members[0]] = reused
            for i in members:
                sources[i] = source
        remainder = max(len(r) - (len(s) if s is not None else 0) for r, s in zip(rows, sources))
        width = max(len(r) for r in rows)
        ends = [max(0, len(r) - remainder) if s is not None else 0 for r, s in zip(rows, sources)]
        slots = width - remainder
        if slots < self.min_prefix_tokens or not any(ends):
            return _Plan([None] * len(rows), [0] * len(rows), 0, [0] * len(rows))
        for i, end in enumerate(ends):
            src = sources[i]
            if src is not None and not src.can_serve(end):
                # The stored sliding tail is too short for this shift: recompute this prefix in full.
                fresh = extend_prefix(self.model, None, src.tokens, stop=stop)
                sources = [fresh if s is src else s for s in sources]
                owners = {k: (0 if sources[k] is fresh else v) for k, v in owners.items()}
        cached = [min(end, owners[i]) if i in owners else end for i, end in enumerate(ends)]
        return _Plan(sources, ends, slots, cached)

    def _clusters(self, rows: list[list[int]]) -> list[tuple[list[int], int]]:
        """Groups of rows sharing a long prefix, with its length (the engines' one rule, engines.prefix)."""
        return [(list(g.members), g.shared) for g in group_by_prefix(rows, self.min_prefix_tokens)]

    def _source(self, tokens: Any, stop: Callable[[], str | None]) -> tuple[PrefixKV, int]:
        """KV for ``tokens``: the longest cached prefix extended by the rest. Returns it and the number of
        tokens that came from the cache."""
        assert self.prefix_cache is not None
        hit = self.prefix_cache.lookup(tokens, tokens.numel())
        reused = len(hit) if hit is not None else 0
        source = extend_prefix(self.model, hit, tokens, stop=stop)
        if reused < len(source):
            self.prefix_cache.insert(source)
        return source, reused

    def _store_generated(self, cache: Any, sequence: Any) -> None:
        """Keep a lone request's prompt plus reply: the next root turn repeats both."""
        assert self.prefix_cache is not None
        stored = max(layer.keys.shape[-2] for layer in cache.layers)
        self.prefix_cache.insert(prefix_from_cache(cache, sequence[:stored].clone()))

    def _decode(
        self, token_ids: list[int], prompt_len: int, sampling: SamplingParams, seconds: float, cached: int = 0
    ) -> Result:
        eos_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        kept: list[int] = []
        finish = "length"
        for tok in token_ids:
            if tok in eos_ids:
                finish = "stop"
                break
            kept.append(tok)
        while kept and kept[-1] == pad and pad not in eos_ids:
            kept.pop()
        text: str = self.tokenizer.decode(kept, skip_special_tokens=True)  # type: ignore[assignment]  # one sequence in, one str out
        cut = [text.find(s) for s in sampling.stop if s in text]
        if cut:
            text, finish = text[: min(cut)], "stop"
        usage = Usage(
            calls=1,
            prompt_tokens=int(prompt_len),
            cached_tokens=int(cached),
            completion_tokens=len(kept),
            seconds=seconds,
        )
        return Result(text=text, finish_reason=finish, usage=usage)  # type: ignore[arg-type]

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


@dataclass
class _Plan:
    """How a batch reuses cached prefixes: row i's first ``ends[i]`` tokens come from ``sources[i]`` and fill
    the first ``slots`` positions; ``cached[i]`` of them were not computed for this request."""

    sources: list[PrefixKV | None]
    ends: list[int]
    slots: int
    cached: list[int]


@dataclass
class _Row:
    ids: list[int]
    cancel: threading.Event | None


def _batch_stop(events: list[threading.Event | None], deadline: float | None) -> Callable[[], str | None]:
    """Why a whole batch must stop now (its deadline passed, or every row was cancelled), or None."""

    def stop() -> str | None:
        if deadline is not None and time.monotonic() >= deadline:
            return "stopped at the deadline"
        if events and all(e is not None and e.is_set() for e in events):
            return "cancelled"
        return None

    return stop


def _cancel_criteria(torch: Any, events: list[threading.Event | None]) -> Any:
    """A stopping criterion that ends each row whose cancel event is set (the batch ends when all have)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class CancelRows(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            flags = [e is not None and e.is_set() for e in events]
            return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([CancelRows()])


def _cut(error: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> Result:
    usage = Usage(
        calls=1, prompt_tokens=prompt_tokens, cached_tokens=None, completion_tokens=completion_tokens, seconds=seconds
    )
    return Result(text="", finish_reason="error", usage=usage, error=error)
