"""The augmentation service's gRPC layer: servicer and proto conversion (the only protobuf here)."""
