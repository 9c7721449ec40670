"""The annotation-store's filterable fields; the AIP-160 parser itself is in core.

``simulacra_services.core.api.filters`` parses and compiles filters for every
service; its names are re-exported here so that existing imports keep working.
"""

from __future__ import annotations

from collections.abc import Mapping

from simulacra_services.core.api.filters import (  # noqa: F401  (re-exported: one parser for every service)
    MAX_COMPARISONS,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    REASON,
    And,
    Comparison,
    FieldSpec,
    FieldType,
    Node,
    Not,
    Operator,
    Or,
    Target,
    Value,
    apply,
    compare,
    fields_of,
    parse_filter,
    to_sqlalchemy,
)

ITEM_FILTER_FIELDS: Mapping[str, FieldSpec] = {
    "split": FieldSpec(FieldType.STRING),
    "category": FieldSpec(FieldType.STRING),
    "category_id": FieldSpec(FieldType.INTEGER),
    "kind": FieldSpec(
        FieldType.STRING,
        ("class_label", "box", "rotated_box", "polygon", "mask", "keypoints", "cuboid", "pixel_map"),
    ),
    "lineage": FieldSpec(FieldType.STRING, ("real", "augmented", "synthetic")),
    "format": FieldSpec(FieldType.STRING, ("png", "jpeg")),
    "width": FieldSpec(FieldType.INTEGER),
    "height": FieldSpec(FieldType.INTEGER),
    "channels": FieldSpec(FieldType.INTEGER),
    "file_name": FieldSpec(FieldType.STRING),
    "sha256": FieldSpec(FieldType.STRING),
    "create_time": FieldSpec(FieldType.TIMESTAMP),
    "attributes": FieldSpec(FieldType.MAP),
}
"""The fields of ``ListItemsRequest.filter`` (and StreamItems, statistics, export)."""
