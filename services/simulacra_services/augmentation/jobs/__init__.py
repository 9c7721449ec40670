"""Dataset jobs: a dataset version in, a derived dataset version out (plans and the handler)."""
