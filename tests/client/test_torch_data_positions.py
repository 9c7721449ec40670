"""The position arithmetic of the data-loading layer (pure, no server): worker and rank
splits partition the positions, the mix schedule holds its ratio exactly."""

from __future__ import annotations

from itertools import islice

import pytest

from simulacra_client.positions import MixSchedule, rank_to_global, worker_positions
from simulacra_client.torch_data.mixing import balance_weights
from simulacra_client.torch_data.synthetic import generator_name, runs, shard_index


@pytest.mark.parametrize(("start", "workers", "block"), [(0, 1, 1), (0, 2, 8), (13, 3, 5), (7, 4, 1)])
def test_workers_partition_the_positions_and_round_robin_batches_restore_their_order(start: int, workers: int, block: int) -> None:
    stop = start + 101
    parts = [list(worker_positions(start, w, workers, block, stop)) for w in range(workers)]
    assert sorted(p for part in parts for p in part) == list(range(start, stop))
    # What a DataLoader does: batch k of every worker in turn.
    chunks = [[part[i : i + block] for i in range(0, len(part), block)] for part in parts]
    merged = [p for k in range(max(map(len, chunks))) for w in range(workers) if k < len(chunks[w]) for p in chunks[w][k]]
    assert merged == list(range(start, stop))


def test_ranks_partition_the_global_indices() -> None:
    seen = sorted(rank_to_global(local, rank, 3, 4) for rank in range(3) for local in range(40))
    assert seen == list(range(120))
    with pytest.raises(ValueError):
        rank_to_global(0, 3, 3, 4)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 1 / 3, 0.5, 0.97, 1.0])
def test_the_mix_schedule_is_exact_after_every_step(ratio: float) -> None:
    schedule = MixSchedule(ratio)
    counts = [0, 0]
    for step in range(2000):
        source, position = schedule.at(step)
        assert position == counts[source]
        counts[source] += 1
        assert abs(counts[1] - (step + 1) * ratio) < 1
        assert schedule.taken(step + 1) == tuple(counts)
    with pytest.raises(ValueError):
        MixSchedule(1.5)


def test_balance_fills_every_class_up_to_the_largest() -> None:
    assert balance_weights([10, 2, 10, 0]) == ({1: 8.0, 3: 10.0}, 18)
    assert balance_weights([5, 5]) == ({}, 0)
    with pytest.raises(ValueError):
        balance_weights([0, 0])


def test_sample_runs_and_generator_names() -> None:
    assert runs([3, 4, 5, 9, 10, 2]) == [(3, 3), (9, 2), (2, 1)]
    assert runs(list(islice(range(5000), 2100))) == [(0, 1024), (1024, 1024), (2048, 52)]
    # The rank's shard: indices i >= start with i % ranks == rank, in order.
    assert [shard_index(p, 5, 1, 3) for p in range(4)] == [i for i in range(5, 20) if i % 3 == 1][:4]
    assert [shard_index(p, 5, 0, 1) for p in range(3)] == [5, 6, 7]
    assert generator_name("digits") == "models/digits/versions/latest"
    assert generator_name("digits@production") == "models/digits/versions/production"
    assert generator_name("models/digits/versions/3") == "models/digits/versions/3"
