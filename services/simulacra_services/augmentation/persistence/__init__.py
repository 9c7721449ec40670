"""Where the augmentation service keeps its state (object storage)."""
