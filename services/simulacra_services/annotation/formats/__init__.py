"""Dataset formats: reading and writing them, without storage or protobuf.

- ``coco``, ``yolo``, ``mnist``: the formats themselves <-> domain objects
- ``rle``: COCO run-length encoding of masks
- ``importers`` / ``exporters``: import sources planned, checked and written; exports written as blobs
"""
