"""nytorch: the legacy particle API, drop-in, built on nytorch_fn (placeholder until the compat layer lands)."""
