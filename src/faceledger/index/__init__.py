"""Vector indexes behind the :class:`VectorIndex` protocol."""
