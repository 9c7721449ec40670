"""The training loop: trainers per family, EMA, DiffAugment, ADA, batch schedule and checkpoints."""
