"""Prefix-aware layout and grouping: what lets engines compute a shared prefix once.

Siblings of one RLM step usually share a long prefix (instructions, then a document or chunk) and differ
only at the end (the question). Prompts laid out that way, and batches grouped by their common rendered
prefix, let an engine's prefix cache (vLLM's blocks, our transformers engine's reused KV) do the work once.
"""

from __future__ import annotations

# A prefix group is split off into its own engine call only when merging would keep at least this share of
# the shorter of the two prefixes (otherwise one long document would be diluted into a short shared header).
_MERGE_KEEP = 0.5


def shared_prefix_first(
    instructions: str, shared: str = "", varying: str = "", *, sep: str = "\n\n"
) -> list[dict[str, str]]:
    """Chat messages for a sub-call laid out for prefix caching: what siblings share comes first (the
    instructions, then the shared document or chunk), the part that differs (the question) comes last.
    One user message, because some chat templates (Gemma) fold a system turn into the user turn anyway."""
    return [{"role": "user", "content": shared_prefix_prompt(instructions, shared, varying, sep=sep)}]


def shared_prefix_prompt(instructions: str, shared: str = "", varying: str = "", *, sep: str = "\n\n") -> str:
    """The same layout as ``shared_prefix_first`` as one completion prompt (for base models)."""
    for name, value in (("instructions", instructions), ("shared", shared), ("varying", varying), ("sep", sep)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return sep.join(part for part in (instructions, shared, varying) if part)


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings (compares blocks in C, then characters)."""
    n = min(len(a), len(b))
    i, step = 0, 1024
    while step:
        while i + step <= n and a[i : i + step] == b[i : i + step]:
            i += step
        step //= 4
    return i


def plan_calls(pieces: list[list[str]], max_batch: int, min_shared_prefix: int) -> list[list[int]]:
    """Split a gathered batch into engine calls. ``pieces`` are the rendered texts of each submission (its
    siblings stay together). Pieces whose texts share at least ``min_shared_prefix`` characters form a
    call of their own (the engine computes that prefix once); everything else shares one call. Returns
    lists of piece indices, each call within ``max_batch`` requests."""
    spans = []  # (lowest text, highest text, own common prefix, size, index)
    for idx, texts in enumerate(pieces):
        lo, hi = min(texts), max(texts)
        spans.append((lo, hi, common_prefix_len(lo, hi), len(texts), idx))
    spans.sort()
    groups: list[tuple[str, str, int, int, list[int]]] = []
    for lo, hi, lcp, size, idx in spans:
        if groups:
            glo, ghi, glcp, gsize, members = groups[-1]
            mlo, mhi = min(glo, lo), max(ghi, hi)
            merged = common_prefix_len(mlo, mhi)
            if gsize + size <= max_batch and merged >= min_shared_prefix and merged >= _MERGE_KEEP * min(glcp, lcp):
                groups[-1] = (mlo, mhi, merged, gsize + size, members + [idx])
                continue
        groups.append((lo, hi, lcp, size, [idx]))
    calls: list[list[int]] = []
    pool: list[int] = []
    pool_size = 0
    for _, _, lcp, size, members in groups:
        if size >= 2 and lcp >= min_shared_prefix:
            calls.append(members)
            continue
        if pool and pool_size + size > max_batch:
            calls.append(pool)
            pool, pool_size = [], 0
        pool.extend(members)
        pool_size += size
    if pool:
        calls.append(pool)
    return calls
