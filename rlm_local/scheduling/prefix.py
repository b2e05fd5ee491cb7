"""Prefix-aware layout and call planning: what lets engines compute a shared prefix once.

Siblings of one RLM step usually share a long prefix (instructions, then a document or chunk) and differ
only at the end (the question). Prompts laid out that way, and batches grouped by their common rendered
prefix, let an engine's prefix cache (vLLM's blocks, our transformers engine's reused KV) do the work once.
The grouping rule itself is the engines' (``engines.prefix``): the scheduler and every engine use the same.
"""

from __future__ import annotations

from ..engines.prefix import common_prefix_len, group_by_prefix

__all__ = ["common_prefix_len", "plan_calls", "shared_prefix_first", "shared_prefix_prompt"]


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


def plan_calls(pieces: list[list[str]], max_batch: int, min_shared_prefix: int) -> list[list[int]]:
    """Split a gathered batch into engine calls. ``pieces`` are the rendered texts of each submission (its
    siblings stay together). Pieces grouped by the engines' prefix rule (``engines.prefix``) whose texts
    share at least ``min_shared_prefix`` characters form a call of their own (the engine computes that
    prefix once); everything else shares one call. Returns lists of piece indices, each call within
    ``max_batch`` requests."""
    spans = [(min(texts), max(texts)) for texts in pieces]
    sizes = [len(texts) for texts in pieces]
    groups = group_by_prefix(spans, min_shared_prefix, max_size=max_batch, sizes=sizes, spans=True)
    calls: list[list[int]] = []
    pool: list[int] = []
    pool_size = 0
    for g in groups:
        size = sum(sizes[i] for i in g.members)
        if size >= 2 and g.shared >= min_shared_prefix:
            calls.append(list(g.members))
            continue
        if pool and pool_size + size > max_batch:
            calls.append(pool)
            pool, pool_size = [], 0
        pool.extend(g.members)
        pool_size += size
    if pool:
        calls.append(pool)
    return calls
