"""gRPC side of the training service: servicers, proto conversion, and the annotation-store reader."""
