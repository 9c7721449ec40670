"""The annotation-store's tables (SQLite and PostgreSQL alike).

Versioning without copies. Every dataset has a sequence number ``seq``
bumped by each write to its working state. Item and category rows are never
changed once written (jobs and datasets are the mutable exceptions): a row
carries ``added_seq``, the write that created it, and ``removed_seq``, the
write that deleted or replaced it (NULL while it is live). An edit removes
the old row and adds a new one. A committed version records the sequence at
commit time, so

- the working state is ``removed_seq IS NULL``, and
- version V is ``added_seq <= V.seq AND (removed_seq IS NULL OR removed_seq > V.seq)``.

Committing writes one row; images and pixel maps live content-addressed in
object storage and are never copied. Annotations belong to an item row (an
edit of an item copies its annotations to the new row), so they need no
sequence numbers of their own.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    text,
)

from simulacra_services.core.db import UtcDateTime, metadata
from simulacra_services.core.jobs.table import job_table

# Integer primary keys that are BIGINT on PostgreSQL yet INTEGER (the rowid alias) on SQLite.
RowId = BigInteger().with_variant(Integer(), "sqlite")

datasets = Table(
    "annotation_datasets",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("dataset_id", String(63), nullable=False, unique=True),
    Column("display_name", String(256), nullable=False, default=""),
    Column("description", Text, nullable=False, default=""),
    Column("labels", JSON, nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    # The last sequence number used by a write of the working state.
    Column("seq", BigInteger, nullable=False, default=0),
    # Counters of the working state, kept by every write (cheap Get/List and commit).
    Column("item_count", BigInteger, nullable=False, default=0),
    Column("annotation_count", BigInteger, nullable=False, default=0),
    Column("latest_version", BigInteger, nullable=False, default=0),
)

categories = Table(
    "annotation_categories",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("dataset", RowId, ForeignKey("annotation_datasets.id", ondelete="CASCADE"), nullable=False),
    Column("category_id", BigInteger, nullable=False),
    Column("display_name", String(256), nullable=False),
    Column("supercategory", String(256), nullable=False, default=""),
    # Lists as JSON: keypoint names, and [first, second] pairs (0-based).
    Column("keypoint_names", JSON, nullable=False),
    Column("skeleton", JSON, nullable=False),
    Column("flip_pairs", JSON, nullable=False),
    Column("added_seq", BigInteger, nullable=False),
    Column("removed_seq", BigInteger, nullable=True),
    Index("ix_annotation_categories_lookup", "dataset", "category_id", "added_seq"),
)

items = Table(
    "annotation_items",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("dataset", RowId, ForeignKey("annotation_datasets.id", ondelete="CASCADE"), nullable=False),
    Column("item_id", String(128), nullable=False),
    Column("added_seq", BigInteger, nullable=False),
    Column("removed_seq", BigInteger, nullable=True),
    # Stable 31-bit hash of item_id, for sharded streams (hash % shard_count = shard_index in SQL).
    Column("shard_hash", BigInteger, nullable=False),
    Column("image_sha256", String(64), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("format", String(8), nullable=False),
    Column("channels", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("split", String(32), nullable=False),
    Column("attributes", JSON, nullable=False),
    # "" (none), real, augmented or synthetic; the details in lineage.
    Column("lineage_kind", String(16), nullable=False),
    Column("lineage", JSON, nullable=False),
    Column("file_name", String(1024), nullable=False),
    Column("annotation_count", Integer, nullable=False),
    # sha256 of the item's canonical content (annotations included): version digests are built from it.
    Column("content_sha256", String(64), nullable=False),
    # When the item was first uploaded (kept across edits) and when this row was written.
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    # The row as a serialized simulacra.annotation.v1.Item without `version` and image bytes,
    # written with the row (rows never change) so that a stream sends it without decoding
    # the annotations and encoding them again; see convert.encode_item for the format byte.
    # NULL where an item cannot be sent so (pixel maps, whose data FULL reads inline).
    Column("encoded_item", LargeBinary, nullable=True),
    # Reads of one state walk items in item_id order and test visibility per row.
    Index("ix_annotation_items_dataset_item", "dataset", "item_id", "added_seq"),
    # At most one live row per item id.
    Index(
        "uq_annotation_items_live",
        "dataset",
        "item_id",
        unique=True,
        sqlite_where=text("removed_seq IS NULL"),
        postgresql_where=text("removed_seq IS NULL"),
    ),
)

annotations = Table(
    "annotation_annotations",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("item_row", RowId, ForeignKey("annotation_items.id", ondelete="CASCADE"), nullable=False),
    # Denormalized from the item row so that "items with an annotation of category c" can use an index.
    Column("dataset", RowId, nullable=False),
    # Order within the item, as uploaded.
    Column("position", Integer, nullable=False),
    Column("annotation_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("category_id", BigInteger, nullable=False),
    Column("instance_id", String(64), nullable=False),
    Column("iscrowd", Boolean, nullable=True),
    Column("score", Float, nullable=True),
    Column("area", Float, nullable=True),
    Column("attributes", JSON, nullable=False),
    # The kind's payload (see annotation/domain/codec.py); exact (floats round-trip through JSON).
    Column("geometry", JSON, nullable=False),
    Index("ix_annotation_annotations_item_row", "item_row", "position"),
    Index("ix_annotation_annotations_category", "dataset", "category_id", "item_row"),
    Index("ix_annotation_annotations_kind", "dataset", "kind", "item_row"),
)

versions = Table(
    "annotation_versions",
    metadata,
    Column("dataset", RowId, ForeignKey("annotation_datasets.id", ondelete="CASCADE"), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    # The dataset's seq when committed: the version is every row visible at that seq.
    Column("seq", BigInteger, nullable=False),
    Column("description", Text, nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("item_count", BigInteger, nullable=False),
    Column("annotation_count", BigInteger, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    # What a version committed from a staging was derived from (DatasetVersion.derived_from); "" otherwise.
    Column("derived_from_version", String(256), nullable=False, server_default=""),
    Column("derived_from_pipeline_digest", String(64), nullable=False, server_default=""),
)

# Staging areas (UploadItemsRequest.staging_id): staging ``id`` n owns item and category rows with
# added_seq = -n and removed_seq = -n + 1, which are visible at seq -n only: in no working state
# (removed_seq is set) and in no version until CommitStagedVersion writes a version row with seq -n.
stagings = Table(
    "annotation_stagings",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("dataset", RowId, ForeignKey("annotation_datasets.id", ondelete="CASCADE"), nullable=False),
    Column("staging_id", String(128), nullable=False),
    # The version number once committed, NULL before.
    Column("version", BigInteger, nullable=True),
    Column("create_time", UtcDateTime(), nullable=False),
    Index("uq_annotation_stagings_dataset_staging", "dataset", "staging_id", unique=True),
)


def request_scope(dataset_id: str, operation: str = "") -> str:
    """The idempotency scope (core's ``idempotency_keys``) of a dataset's upload batches and import
    chunks (``operation`` "upload" or "import"); without ``operation``, the prefix of all of them."""
    return f"annotation:datasets/{dataset_id}:{operation}"


# Import and export jobs: core/jobs' table (kind "import" or "export", parent "datasets/{id}",
# label the source or export format, spec {"format": ..., "job": <the request as JSON>}).
jobs = job_table("annotation_jobs")

__all__ = ["annotations", "categories", "datasets", "items", "jobs", "request_scope", "stagings", "versions"]
