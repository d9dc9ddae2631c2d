"""Population algorithms (private; the public names are in ``nytorch_fn.algorithms``)."""
