"""ONNX generators: ``onnx_export`` exports one with the fixed signature (torch; the worker runs it),
``inspect`` checks one trained elsewhere (onnx + onnxruntime), in its own process by way of
``isolated`` (the server imports neither)."""
