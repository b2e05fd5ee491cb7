"""KV prefix reuse for the transformers engine: prefix key/value states kept as plain tensors, a bounded
LRU of them keyed by token ids, and the code that turns them into a batch cache for ``model.generate``.

Why not hand ``generate`` a cache with padding between the shared prefix and each suffix: Gemma 3's
sliding-window layers count window slots, not tokens, so pad slots in the middle push real tokens out of
the window and the output drifts from the no-reuse run. Instead every batch keeps the plain left-padded
layout (pads first, then each row's tokens, all rows ending together) and only the first ``C`` slots come
from precomputed KV: row i gets its own first ``C - pad_i`` tokens from its source, right-aligned. Rows
whose suffix is shorter than the longest simply recompute a few of their prefix tokens. The tensors the
model sees are then exactly those of the no-reuse batch, so greedy outputs are identical.

Sliding layers keep only the last ``window`` tokens (the ones a new token can still see) plus a margin, so
an entry can be cropped or shifted by up to ``margin`` tokens; full-attention layers keep everything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import DynamicCache


def common_prefix_len(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the common prefix of two 1-D token tensors."""
    n = min(a.numel(), b.numel())
    if n == 0:
        return 0
    diff = (a[:n] != b[:n]).nonzero()
    return n if diff.numel() == 0 else int(diff[0])


@dataclass
class PrefixKV:
    """The key/value states of ``tokens`` for one sequence. Tensors are [heads, stored, head_dim]; full
    layers store every token, sliding layers store tokens ``[sliding_start, len)``."""

    tokens: torch.Tensor  # 1-D long
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    sliding: list[bool]
    window: int  # tokens of the past a sliding layer attends to (sliding_window - 1)
    sliding_start: int = 0

    def __len__(self) -> int:
        return int(self.tokens.numel())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values)) + self.tokens.numel() * 8

    def can_serve(self, end: int) -> bool:
        """Whether this entry holds everything a sequence needs to continue after its first ``end`` tokens."""
        return 0 <= end <= len(self) and (not any(self.sliding) or max(0, end - self.window) >= self.sliding_start)

    def crop(self, end: int) -> PrefixKV:
        """The entry for ``tokens[:end]`` (views, no copy)."""
        if not self.can_serve(end):
            raise ValueError(f"cannot crop a {len(self)}-token prefix to {end} tokens")
        keys, values = [], []
        for k, v, sliding in zip(self.keys, self.values, self.sliding):
            stop = end - self.sliding_start if sliding else end
            keys.append(k[:, :stop])
            values.append(v[:, :stop])
        return PrefixKV(self.tokens[:end], keys, values, self.sliding, self.window, self.sliding_start)

    def trimmed(self, margin: int) -> PrefixKV:
        """A compact copy for storage: sliding layers keep the last ``window + margin`` tokens."""
        start = max(self.sliding_start, len(self) - self.window - margin) if any(self.sliding) else 0
        keys, values = [], []
        for k, v, sliding in zip(self.keys, self.values, self.sliding):
            lo = start - self.sliding_start if sliding else 0
            keys.append(k[:, lo:].clone())
            values.append(v[:, lo:].clone())
        return PrefixKV(self.tokens.clone(), keys, values, self.sliding, self.window, start)


def empty_cache(config):
    """A ``DynamicCache`` with the model's layer types (sliding-window layers where the config has them)."""
    from transformers import DynamicCache  # imported late: the engine sets offline mode before transformers loads

    return DynamicCache(config=config)


def supports_reuse(model) -> bool:
    """Prefix reuse handles full-attention and sliding-window layers; anything else (linear attention,
    chunked attention, KV sharing) runs without it."""
    config = model.config.get_text_config(decoder=True)
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    shared = getattr(config, "num_kv_shared_layers", 0)
    if not types <= {"full_attention", "sliding_attention"} or shared:
        return False
    return all(
        type(layer).__name__ in ("DynamicLayer", "DynamicSlidingWindowLayer")
        for layer in empty_cache(model.config).layers
    )


def _window(layer) -> int:
    return int(layer.sliding_window) - 1


def cache_from_prefix(config, prefix: PrefixKV | None, record_past: bool):
    """A batch-1 ``DynamicCache`` holding ``prefix``. With ``record_past`` sliding layers keep every token
    they are given (so the result can be read back whole); attention still only sees the window."""
    cache = empty_cache(config)
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "is_sliding", False) and record_past:
            layer.activate_past_recording()
        if prefix is None or len(prefix) == 0:
            continue
        _fill(layer, prefix.keys[i].unsqueeze(0), prefix.values[i].unsqueeze(0), len(prefix))
    return cache


def _fill(layer, keys: torch.Tensor, values: torch.Tensor, seq_len: int) -> None:
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    if getattr(layer, "is_sliding", False):
        layer.cumulative_length = seq_len


def prefix_from_cache(cache: DynamicCache, tokens: torch.Tensor, row: int = 0) -> PrefixKV:
    """Read row ``row`` of a cache filled (with past recording) for exactly ``tokens`` back into a PrefixKV."""
    keys, values, sliding = [], [], []
    window, start = 0, 0
    for layer in cache.layers:
        is_sliding = getattr(layer, "is_sliding", False)
        # (transformers types a layer's keys/values as optional; a filled DynamicLayer always has them)
        keys.append(layer.keys[row])  # type: ignore[union-attr, index]
        values.append(layer.values[row])  # type: ignore[union-attr, index]
        sliding.append(is_sliding)
        if is_sliding:
            window = _window(layer)
            start = tokens.numel() - layer.keys.shape[-2]  # type: ignore[union-attr]  # (as above)
    return PrefixKV(tokens, keys, values, sliding, window, start)


class Stopped(Exception):
    """Prefix computation was stopped (cancelled, past a deadline); ``str(exc)`` says why."""


STOPPABLE_CHUNK = 256  # tokens computed between two stop checks: a fraction of a second of a CPU core


@torch.inference_mode()
def extend_prefix(
    model, base: PrefixKV | None, tokens: torch.Tensor, chunk: int = 2048, stop: Callable[[], str | None] | None = None
) -> PrefixKV:
    """KV states of ``tokens`` (1-D), reusing ``base`` (a prefix of ``tokens``) and computing the rest.
    Only the last position's logits are computed: over a 262k vocabulary the full logits would cost as much
    as the layers themselves. With ``stop``, the tokens are computed ``STOPPABLE_CHUNK`` at a time and
    ``Stopped`` is raised as soon as ``stop()`` gives a reason."""
    if stop is not None:
        chunk = min(chunk, STOPPABLE_CHUNK)
    done = len(base) if base is not None else 0
    if base is not None and not torch.equal(base.tokens, tokens[:done]):
        raise ValueError("base is not a prefix of tokens")
    if done == len(tokens) and base is not None:
        return base
    cache = cache_from_prefix(model.config, base, record_past=True)
    device = model.device
    for lo in range(done, tokens.numel(), chunk):
        if stop is not None and (why := stop()):
            raise Stopped(why)
        ids = tokens[lo : lo + chunk].unsqueeze(0).to(device)
        positions = torch.arange(lo, lo + ids.shape[1], device=device).unsqueeze(0)
        model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return prefix_from_cache(cache, tokens)


def batch_cache(config, sources: list[PrefixKV | None], ends: list[int], slots: int, record_past: bool = False):
    """The cache for a left-padded batch whose first ``slots`` positions are precomputed: row i holds its
    first ``ends[i]`` tokens (from ``sources[i]``) right-aligned in those slots, pads before them.
    ``record_past`` keeps what generation adds to sliding layers, so the result can be stored afterwards."""
    cache = empty_cache(config)
    batch = len(sources)
    for li, layer in enumerate(cache.layers):
        ref = next(s for s in sources if s is not None)
        heads, _, dim = ref.keys[li].shape
        sliding = getattr(layer, "is_sliding", False)
        width = min(slots, _window(layer)) if sliding else slots
        if sliding and record_past and batch == 1 and sources[0] is not None:
            width = ends[0] - sources[0].sliding_start  # hand over the whole stored tail so it is kept
        keys = ref.keys[li].new_zeros((batch, heads, width, dim))
        values = ref.values[li].new_zeros((batch, heads, width, dim))
        for row, (src, end) in enumerate(zip(sources, ends)):
            if src is None or end == 0:
                continue
            # token t of this row sits in slot (slots - end + t); the layer holds slots [slots - width, slots)
            first_tok = max(0, end - width)
            offset = src.sliding_start if src.sliding[li] else 0
            take_k = src.keys[li][:, first_tok - offset : end - offset]
            take_v = src.values[li][:, first_tok - offset : end - offset]
            n = end - first_tok
            keys[row, :, width - n :] = take_k
            values[row, :, width - n :] = take_v
        _fill(layer, keys, values, slots)
        if sliding and record_past:
            layer.activate_past_recording()
    return cache


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    hit_tokens: int = 0
    inserts: int = 0
    evictions: int = 0


class PrefixCache:
    """Bounded LRU of PrefixKV entries keyed by token ids. ``lookup`` finds the entry sharing the longest
    usable prefix with a token sequence (cropping it when the sequence diverges inside the entry)."""

    def __init__(self, max_entries: int = 16, max_bytes: int = 1 << 30, margin: int = 256) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("prefix cache bounds must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.margin = margin
        self._entries: OrderedDict[int, PrefixKV] = OrderedDict()
        self._next_id = 0
        self.stats = PrefixCacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def entries(self) -> list[PrefixKV]:
        return list(self._entries.values())

    def lookup(self, tokens: torch.Tensor, limit: int) -> PrefixKV | None:
        """The longest usable cached prefix of ``tokens[:limit]``, or None."""
        self.stats.lookups += 1
        best_id, best_len = None, 0
        for key, entry in self._entries.items():
            n = min(common_prefix_len(entry.tokens, tokens), limit)
            if not entry.can_serve(n):
                continue  # diverged too far inside the sliding tail: this entry cannot be cut back there
            if n > best_len:
                best_id, best_len = key, n
        if best_id is None:
            return None
        self._entries.move_to_end(best_id)
        self.stats.hits += 1
        self.stats.hit_tokens += best_len
        return self._entries[best_id].crop(best_len)

    def insert(self, entry: PrefixKV) -> None:
        entry = entry.trimmed(self.margin)
        if entry.nbytes > self.max_bytes or len(entry) == 0:
            return
        # An older entry the new one can fully stand in for (same tokens, at least as much sliding tail)
        # is dead weight.
        for key, old in list(self._entries.items()):
            n = len(old)
            if (
                n <= len(entry)
                and entry.sliding_start <= old.sliding_start
                and torch.equal(entry.tokens[:n], old.tokens)
            ):
                del self._entries[key]
        self._entries[self._next_id] = entry
        self._next_id += 1
        self.stats.inserts += 1
        total = self.nbytes
        while len(self._entries) > self.max_entries or total > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            total -= dropped.nbytes
            self.stats.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
