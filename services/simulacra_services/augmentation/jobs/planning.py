"""Which source items get how many augmented copies: plain copies, or rebalancing.

Pure functions on class counts, so the plan is testable without a server.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

MAX_COPIES_PER_ITEM = 64


def histogram(counts: Iterable[Mapping[int, int]]) -> Counter[int]:
    total: Counter[int] = Counter()
    for item in counts:
        total.update(item)
    return total


def plan_copies(items: Sequence[tuple[str, Mapping[int, int]]], copies: int, category_ids: Sequence[int]) -> dict[str, int]:
    """``copies`` of each item; with ``category_ids``, only of items holding one of them."""
    wanted = set(category_ids)
    return {name: copies for name, counts in items if not wanted or wanted & set(counts)}


def plan_rebalance(
    items: Sequence[tuple[str, Mapping[int, int]]], max_ratio: float, category_ids: Sequence[int] = ()
) -> tuple[dict[str, int], Counter[int]]:
    """Copies per item so that every class reaches at least 1/``max_ratio`` of the largest class.

    Greedy: while some class is below its target (recomputed after each copy,
    since a copy also adds the other objects of its item), the rarest such
    class gets one more copy of one of its items: the one with the fewest
    copies so far, then the one where that class is the largest share. Items
    stop at ``MAX_COPIES_PER_ITEM``; a class none of whose items can take
    another copy is given up. ``category_ids`` limits which classes are raised.
    Returns the plan and the expected class counts of source + copies
    (annotations the policy drops make the real ones a little lower).
    """
    counts = histogram(c for _, c in items)
    plan: dict[str, int] = {}
    if not counts:
        return plan, counts
    holders = {cls: [(name, c) for name, c in items if c.get(cls, 0) > 0] for cls in counts}
    given_up: set[int] = set()
    while True:
        target = math.ceil(max(counts.values()) / max_ratio)
        short = [c for c in counts if counts[c] < target and c not in given_up and (not category_ids or c in category_ids)]
        if not short:
            return plan, counts
        cls = min(short, key=lambda c: (counts[c], c))
        open_items = [(name, c) for name, c in holders[cls] if plan.get(name, 0) < MAX_COPIES_PER_ITEM]
        if not open_items:
            given_up.add(cls)
            continue
        name, item_counts = min(open_items, key=lambda e: (plan.get(e[0], 0), -e[1][cls] / sum(e[1].values()), e[0]))
        plan[name] = plan.get(name, 0) + 1
        counts.update(item_counts)
