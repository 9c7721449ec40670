"""Which items get how many copies: plain copies and rebalancing (pure functions)."""

from __future__ import annotations

from collections import Counter

from simulacra_services.augmentation.jobs.planning import MAX_COPIES_PER_ITEM, plan_copies, plan_rebalance


def test_copies_of_every_item_or_of_items_with_a_category() -> None:
    items = [("a", Counter({1: 2})), ("b", Counter({2: 1})), ("c", Counter())]
    assert plan_copies(items, 3, []) == {"a": 3, "b": 3, "c": 3}
    assert plan_copies(items, 2, [2]) == {"b": 2}


def test_rebalance_counts_the_other_objects_a_copy_adds() -> None:
    items = [(f"car{k}", Counter({1: 1})) for k in range(6)] + [("bike", Counter({1: 1, 2: 1}))]
    plan, after = plan_rebalance(items, 2.0)
    # Each copy of the only bike item adds a car too: 5 copies reach 12 cars and 6 bikes.
    assert plan == {"bike": 5} and after == Counter({1: 12, 2: 6})
    assert max(after.values()) <= 2.0 * min(after.values())


def test_rebalance_prefers_items_where_the_class_dominates_and_spreads_copies() -> None:
    items = [("cars", Counter({1: 20})), ("mixed", Counter({1: 3, 2: 1})), ("bike", Counter({2: 1}))]
    plan, after = plan_rebalance(items, 4.0)
    assert plan["bike"] >= plan.get("mixed", 0) and after[1] <= 4 * after[2]


def test_rebalance_gives_up_when_items_are_full_and_leaves_balanced_data_alone() -> None:
    items = [("cars", Counter({1: 1000})), ("bike", Counter({2: 1}))]
    plan, after = plan_rebalance(items, 2.0)
    assert plan == {"bike": MAX_COPIES_PER_ITEM} and after[2] == MAX_COPIES_PER_ITEM + 1
    assert plan_rebalance([("a", Counter({1: 2})), ("b", Counter({2: 2}))], 1.5) == ({}, Counter({1: 2, 2: 2}))
    assert plan_rebalance([], 2.0) == ({}, Counter())
