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

``annotation.store.AnnotationStore`` composes them behind the API the servicer and jobs use;
``annotation.staging`` builds staged versions on ``rows``.
"""
