"""What the service does with the engine: checked batches on a worker pool, stored pipelines resolved."""
