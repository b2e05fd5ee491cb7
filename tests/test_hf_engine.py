"""The transformers engine on the embedded model: batching, KV prefix reuse (identical greedy text, exact
cached_tokens), root-conversation reuse, LRU bounds, per-request errors, stop strings. The PrefixCache
unit tests at the bottom use small synthetic tensors and need no model."""

from __future__ import annotations

import pytest
import torch
from cancelling import STOPPED_CPU_S

from rlm_local.engines.base import Request
from rlm_local.engines.prefix_cache import PrefixCache, PrefixKV, common_prefix_len

# Longer than Gemma 3's 512-token sliding window, so the sliding layers' cache handling is exercised.
RECORDS = " ".join(
    f"Record {i}: item {i} has value {i * 7 % 13} and colour {['red', 'blue', 'green'][i % 3]}." for i in range(34)
)
QUESTIONS = [
    "What colour is item 5?",
    "Which item has value 3? Answer in one word, please, briefly.",
    "Summarise the records.",
]


def sibling(question: str, max_tokens: int = 6) -> Request:
    return Request.completion(f"Read the records.\n\n{RECORDS}\n\nQuestion: {question}\nAnswer:", max_tokens=max_tokens)


@pytest.fixture(scope="module")
def engine(embedded_engine):
    """The shared embedded engine with a fresh prefix cache; settings restored afterwards."""
    saved = (embedded_engine.prefix_cache, embedded_engine.min_prefix_tokens)
    embedded_engine.prefix_cache = PrefixCache()
    yield embedded_engine
    embedded_engine.prefix_cache, embedded_engine.min_prefix_tokens = saved


def without_reuse(engine, requests: list[Request]):
    saved, engine.prefix_cache = engine.prefix_cache, None
    try:
        return engine.generate(requests)
    finally:
        engine.prefix_cache = saved


@pytest.mark.model
def test_loads_from_cache_and_generates(engine):
    assert engine.backend == "transformers" and engine.context_length >= 8192
    [res] = engine.generate([Request.completion("The capital of France is", max_tokens=4)])
    assert res.ok and res.text.strip()
    assert res.usage.calls == 1 and res.usage.prompt_tokens == engine.count_tokens("The capital of France is") + 1
    assert 0 < res.usage.completion_tokens <= 4


@pytest.mark.model
def test_batched_generation_equals_one_by_one(engine):
    requests = [
        Request.completion(p, max_tokens=8)
        for p in ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village by the sea,")
    ]
    batched = without_reuse(engine, requests)
    alone = [without_reuse(engine, [r])[0] for r in requests]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert all(r.ok and r.usage.cached_tokens == 0 for r in batched)


# Siblings of different suffix lengths plus one unrelated short prompt in the same batch.
SIBLINGS = [sibling(q) for q in QUESTIONS] + [Request.completion("The capital of France is", max_tokens=6)]


@pytest.fixture(scope="module")
def plain_siblings(engine):
    return without_reuse(engine, SIBLINGS)


@pytest.mark.model
def test_sibling_prefix_reuse_is_identical_and_counts_cached_tokens(engine, plain_siblings):
    engine.prefix_cache.clear()
    requests, plain = SIBLINGS, plain_siblings
    reused = engine.generate(requests)
    assert [r.text for r in reused] == [r.text for r in plain]
    assert all(r.ok for r in reused)

    ids = [engine._tokenize(r.prompt) for r in requests]
    shared = min(common_prefix_len(torch.tensor(ids[0]), torch.tensor(i)) for i in ids[1:3])
    assert shared > 512
    # Every row runs the longest uncached remainder through the model; the rest of its prompt is reused.
    remainder = max([len(i) - shared for i in ids[:3]] + [len(ids[3])])
    expected = [len(i) - remainder for i in ids[:3]]
    cached = [r.usage.cached_tokens for r in reused[:3]]
    # One sibling computed the shared prefix (nothing cached before this call); the others reused it.
    assert sorted(cached) == sorted([0] + [e for e, c in zip(expected, cached) if c != 0])
    assert cached.count(0) == 1 and reused[3].usage.cached_tokens == 0

    again = engine.generate(requests[:3])
    assert [r.text for r in again] == [r.text for r in plain[:3]]
    remainder = max(len(i) - shared for i in ids[:3])
    assert [r.usage.cached_tokens for r in again] == [len(i) - remainder for i in ids[:3]]


@pytest.mark.model
def test_stored_prefix_too_short_to_shift_is_recomputed(engine, plain_siblings):
    saved = engine.prefix_cache
    engine.prefix_cache = PrefixCache(margin=0)  # stored sliding tails hold exactly the window
    try:
        engine.generate(SIBLINGS[:3])
        again = engine.generate(SIBLINGS[:3])
    finally:
        engine.prefix_cache = saved
    assert [r.text for r in again] == [r.text for r in plain_siblings[:3]]
    # The rows with shorter suffixes cannot be shifted over the stored entry: the prefix was recomputed by
    # one row and reused by the others.
    assert sum(r.usage.cached_tokens == 0 for r in again) == 1


@pytest.mark.model
def test_root_conversation_reuses_the_previous_turn(engine):
    engine.prefix_cache.clear()
    system = "You answer questions about the records below.\n\n" + RECORDS[:1200]
    turn1 = [{"role": "system", "content": system}, {"role": "user", "content": "What colour is item 2?"}]
    [first] = engine.generate([Request.chat(turn1, max_tokens=8)])
    assert first.ok and first.usage.cached_tokens == 0
    turn2 = turn1 + [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And item 4? Reply in one word."},
    ]
    request = Request.chat(turn2, max_tokens=8)
    [second] = engine.generate([request])
    previous = len(engine._tokenize(engine.render(Request.chat(turn1))))
    assert second.usage.cached_tokens >= previous - 1  # at least the whole previous prompt
    assert second.usage.cached_tokens < second.usage.prompt_tokens
    assert engine.prefix_cache.stats.hits >= 1
    assert second.text == without_reuse(engine, [request])[0].text


@pytest.mark.model
def test_prefix_lru_respects_its_bounds(engine):
    saved = engine.prefix_cache
    engine.prefix_cache = PrefixCache(max_entries=2)
    try:
        for i in range(3):
            engine.generate([Request.completion(f"Document {i}. " + RECORDS[:400], max_tokens=1)])
            assert len(engine.prefix_cache) <= 2
        assert engine.prefix_cache.stats.evictions >= 1
        engine.prefix_cache = PrefixCache(max_bytes=1000)  # smaller than any entry: nothing is kept
        [res] = engine.generate([Request.completion("Document 9. " + RECORDS[:400], max_tokens=1)])
        assert res.ok and len(engine.prefix_cache) == 0
    finally:
        engine.prefix_cache = saved


@pytest.mark.model
def test_too_long_prompt_fails_only_its_own_request(engine):
    huge = "word " * (engine.context_length + 10)
    results = engine.generate(
        [
            Request.completion("The capital of France is", max_tokens=3),
            Request.completion(huge, max_tokens=3),
            Request.completion("One, two, three,", max_tokens=3),
        ]
    )
    assert results[0].ok and results[2].ok
    assert not results[1].ok and "exceeds the model's context" in results[1].error


@pytest.mark.model
def test_stop_strings_cut_the_text(engine):
    prompt = "Count: 1, 2, 3, 4,"
    [free] = engine.generate([Request.completion(prompt, max_tokens=12)])
    assert len(free.text) > 4
    stop = free.text[3:5]
    cut = free.text[: free.text.find(stop)]
    [stopped] = engine.generate([Request.completion(prompt, max_tokens=12, stop=(stop,))])
    assert stopped.text == cut and stopped.finish_reason == "stop"


# ---- PrefixCache without a model ---------------------------------------------------------------------------
def fake_prefix(tokens: list[int], window: int = 4, sliding_start: int = 0) -> PrefixKV:
    """Two layers (sliding, full) whose key at token t is t, so slices can be checked by value."""
    n = len(tokens)
    full = torch.arange(n, dtype=torch.float32).view(1, n, 1)
    tail = torch.arange(sliding_start, n, dtype=torch.float32).view(1, n - sliding_start, 1)
    return PrefixKV(
        torch.tensor(tokens), [tail, full], [tail.clone(), full.clone()], [True, False], window, sliding_start
    )


def test_crop_needs_the_sliding_tail():
    entry = fake_prefix(list(range(20)), window=4, sliding_start=10)
    assert entry.can_serve(14) and entry.can_serve(20) and not entry.can_serve(13) and not entry.can_serve(21)
    cropped = entry.crop(16)
    assert cropped.keys[0].flatten().tolist() == list(range(10, 16))
    assert cropped.keys[1].flatten().tolist() == list(range(16))
    with pytest.raises(ValueError):
        entry.crop(12)
    trimmed = entry.trimmed(margin=2)  # keeps window + margin = 6 tokens of sliding tail
    assert trimmed.sliding_start == 14 and trimmed.keys[0].flatten().tolist() == list(range(14, 20))


def test_lookup_returns_the_longest_usable_prefix():
    cache = PrefixCache(margin=100)
    cache.insert(fake_prefix([1, 2, 3, 4, 5, 6]))
    cache.insert(fake_prefix([1, 2, 9, 9]))
    hit = cache.lookup(torch.tensor([1, 2, 3, 4, 7, 7, 7]), limit=6)
    assert hit is not None and hit.tokens.tolist() == [1, 2, 3, 4]
    assert cache.lookup(torch.tensor([1, 2, 3, 4, 5, 6, 8]), limit=3).tokens.tolist() == [1, 2, 3]
    assert cache.lookup(torch.tensor([5, 5, 5]), limit=3) is None
    assert cache.stats.hits == 2 and cache.stats.lookups == 3


def test_lru_evicts_by_count_and_bytes_and_drops_covered_entries():
    cache = PrefixCache(max_entries=2, margin=100)
    for first in (10, 20, 30):
        cache.insert(fake_prefix([first, 1, 2]))
    assert [e.tokens[0].item() for e in cache.entries()] == [20, 30] and cache.stats.evictions == 1
    cache.lookup(torch.tensor([20, 1, 2, 3]), limit=3)  # 20 becomes most recent
    cache.insert(fake_prefix([40, 1]))
    assert [e.tokens[0].item() for e in cache.entries()] == [20, 40]
    cache.insert(fake_prefix([40, 1, 5, 6]))  # stands in for [40, 1]
    assert [e.tokens.tolist() for e in cache.entries()] == [[20, 1, 2], [40, 1, 5, 6]]
    size = fake_prefix([1, 2, 3]).nbytes
    small = PrefixCache(max_bytes=2 * size + 1, margin=100)
    for first in (1, 2, 3):
        small.insert(fake_prefix([first, 0, 0]))
    assert len(small) == 2 and small.nbytes <= 2 * size + 1


@pytest.mark.model
def test_concurrent_callers_are_serialised_and_get_their_own_answers(engine):
    """Two threads (say an RLM's scheduler and the server) calling generate at once: same answers as alone."""
    import threading

    requests = [[sibling(QUESTIONS[0])], [sibling(QUESTIONS[1]), sibling(QUESTIONS[2])]]
    alone = [[r.text for r in engine.generate(batch)] for batch in requests]
    together: dict[int, list[str]] = {}

    def call(i: int) -> None:
        together[i] = [r.text for r in engine.generate(requests[i])]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [together[0], together[1]] == alone


@pytest.mark.model
def test_generation_stops_at_the_deadline_and_counts_the_work(engine):
    import time

    started = time.monotonic()
    (result,) = engine.generate([sibling("Summarise the records.", max_tokens=400)], deadline=started + 0.5)
    took = time.monotonic() - started
    assert took < 3.0, took  # 400 tokens take far longer on CPU; the cut comes within a decode step or two
    assert not result.ok and "deadline" in result.error
    assert result.usage.calls == 1 and result.usage.prompt_tokens > 0


@pytest.mark.model
@pytest.mark.parametrize("phase", ["prompt", "decode"])
def test_a_cancelled_request_stops_using_the_cpu(engine, phase):
    import random

    from cancelling import cancel_after

    rng = random.Random(len(phase))
    words = "apple river stone cloud green quick lamp paper north seven".split()
    # prompt: ~2,000 new tokens (seconds of prompt computation); decode: a short prompt and 1,000 new tokens
    text = " ".join(rng.choice(words) for _ in range(1_900)) if phase == "prompt" else "Once upon a time"
    request = Request.completion(text, max_tokens=1_000)
    (result,), cpu = cancel_after(
        lambda stop: engine.generate([request], cancel=[stop]), 1.5 if phase == "prompt" else 4.0
    )
    assert not result.ok and "cancelled" in result.error and result.usage.calls == 1
    assert cpu < STOPPED_CPU_S, f"{cpu:.2f} s of CPU from the cancel to 1 s after it returned"
