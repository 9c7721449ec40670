"""The annotation-store's API edge: everything that knows protobuf or gRPC.

- ``servicer``: ``AnnotationServicer``, the RPCs (names parsed, messages converted, the store called in threads)
- ``convert``: messages <-> domain objects, and the stored item encoding (``ITEM_ENCODING``) given to the store
- ``stream``: ``ItemStreams``, the StreamItems RPC (from rows and blobs, or from a version's stream pack)
- ``wire``: StreamItems responses joined as wire bytes from stored encodings
- ``jobs``: ``JobService``, the import/export job RPCs on ``core.jobs``
- ``job_handlers``: the jobs' work as ``core.jobs`` handlers (job specs are messages)
"""
