"""Prefix grouping, written once: which prompts share a prefix long enough to compute it once.

Every user of the rule calls ``group_by_prefix``: the scheduler on rendered texts (which submissions go to
the engine together), the transformers engine on token ids (which rows share one reused KV prefix) and the
llama.cpp engine on token ids (which siblings get one prefix computed and copied into their slots). No
torch or llama.cpp here, so the rule is tested without a model.

The rule: items are sorted and chained; the next item joins the current group while the prefix the group
would then share is at least ``min_shared`` long and keeps at least ``keep`` of the shorter of the two
prefixes being joined (the group's and the item's own), so one short common header (a system prompt) does
not merge two long documents into one group that shares only the header. A group never grows past
``max_size`` members (counting each item's ``sizes`` weight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_KEEP = 0.5


def common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common prefix of two strings or two token lists (compares slices in C, in
    shrinking steps, so long equal prefixes cost a few comparisons)."""
    n = min(len(a), len(b))
    i, step = 0, 1024
    while step:
        while i + step <= n and a[i : i + step] == b[i : i + step]:
            i += step
        step //= 4
    return i


@dataclass(frozen=True)
class PrefixGroup:
    """Items (indices into the input) that share their first ``shared`` elements."""

    members: tuple[int, ...]
    shared: int


def group_by_prefix(
    items: Sequence[Any],
    min_shared: int,
    *,
    keep: float = DEFAULT_KEEP,
    max_size: int | None = None,
    sizes: Sequence[int] | None = None,
    spans: bool = False,
) -> list[PrefixGroup]:
    """Group ``items`` by shared prefix (see the module rule). Every item lands in exactly one group, in
    sorted order; a group of one item has ``shared`` equal to the item's own length (or its span's common
    prefix). With ``spans=True`` each item is a ``(lowest, highest)`` pair standing for several sequences
    that must stay together (the texts of one submission), and the shared prefix is that of the group's
    lowest and highest sequence."""
    if min_shared < 1:
        raise ValueError(f"min_shared must be >= 1, got {min_shared}")
    n = len(items)
    if not n:
        return []
    pairs: list[tuple[Any, Any]] = [(it[0], it[1]) if spans else (it, it) for it in items]
    weights = list(sizes) if sizes is not None else [1] * n
    order = sorted(range(n), key=lambda i: (pairs[i][0], pairs[i][1]))
    groups: list[PrefixGroup] = []
    members: list[int] = []
    lo = hi = pairs[order[0]][0]
    shared = weight = 0
    for i in order:
        ilo, ihi = pairs[i]
        own = common_prefix_len(ilo, ihi)
        if members:
            mlo, mhi = min(lo, ilo), max(hi, ihi)
            merged = common_prefix_len(mlo, mhi)
            fits = max_size is None or weight + weights[i] <= max_size
            if fits and merged >= min_shared and merged >= keep * min(shared, own):
                members.append(i)
                lo, hi, shared, weight = mlo, mhi, merged, weight + weights[i]
                continue
            groups.append(PrefixGroup(tuple(members), shared))
        members, lo, hi, shared, weight = [i], ilo, ihi, own, weights[i]
    groups.append(PrefixGroup(tuple(members), shared))
    return groups


def sibling_prefixes(token_ids: Sequence[Sequence[int]], min_shared: int) -> list[PrefixGroup]:
    """Groups of at least two prompts worth computing a prefix once for, each with the prefix length to
    compute: at least one token short of its shortest member, so every member has a token of its own to
    run (its logits come from that token)."""
    out = []
    for g in group_by_prefix(token_ids, min_shared):
        if len(g.members) < 2:
            continue
        length = min(g.shared, min(len(token_ids[i]) for i in g.members) - 1)
        if length >= min_shared:
            out.append(PrefixGroup(g.members, length))
    return out
