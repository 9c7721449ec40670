"""Statistics of a dataset state (optionally filtered), computed in the database."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.item_reads import item_query
from simulacra_services.annotation.statistics import Statistics, compute_statistics


class StatisticsRepository:
    """Aggregates over the items of a state (``annotation.statistics`` holds the queries)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def compute(self, dataset_id: str, version: str | int | None = None, *, filter: str = "") -> Statistics:
        with self.engine.connect() as conn:
            dataset, seq, _, statement = item_query(conn, dataset_id, version, filter)
            return compute_statistics(conn, statement.subquery(), rows.categories_at(conn, dataset.id, seq))
