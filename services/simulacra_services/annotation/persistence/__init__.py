"""The annotation-store's persistence layer: one repository per aggregate, no protobuf.

- ``rows``: row helpers every repository shares (dataset row and lock, sequence numbers,
  version rows, categories at a state, request records, item inserts, content digests)
- ``datasets``: ``DatasetRepository``
- ``categories``: ``CategoryRepository``
- ``item_writes`` / ``item_reads``: ``ItemWriter`` / ``ItemReader``
- ``content``: ``ItemContent``, the blob bytes behind records (parallel reads)
- ``versions``: ``VersionRepository``
- ``statistics``: ``StatisticsRepository``
- ``imports``: ``DatasetJobRepository`` (job rows of a dataset, an import's writes and their undo)
- ``staging``: ``Stagings``, items uploaded invisibly, then committed as a version or discarded
- ``tables``, ``row_codec``, ``queries``: the tables, rows to records and back, SQL building blocks
- ``blobs``: ``BlobStore``, content-addressed blobs and image checks
- ``packs``: ``PackStore``, committed versions' streams stored whole (stream packs) for StreamItems
- ``store``: ``AnnotationStore``, the facade composing the repositories for the API layer

The stored item encoding is the API's (``row_codec.ItemEncoding``, given to the store).
"""
