"""The annotation-store's domain: plain objects and the rules on them, no protobuf, no SQL.

- ``model``: annotations, geometries, categories (immutable dataclasses)
- ``records``: what the store takes and returns (items, datasets, versions, pages)
- ``validation``: checks of annotations, categories and identifiers
- ``prepare``: items checked before anything is written (images, blobs, categories, lineage)
- ``codec``: annotations to and from their stored JSON, and canonical digests
- ``names``: resource names (AIP-122) parsed and built
- ``filters``: the filterable fields (the AIP-160 parser is in core)
- ``statistics``: the figures of a dataset state and their buckets
"""
