"""Model merging (private): per-tensor kernels, the method table, particles, files, mergekit YAML.

The public names live in ``nytorch_fn.merge``. Layers depend one way:
``_select`` -> ``_kernels`` -> ``_methods`` -> ``_particles`` / ``_files`` -> ``_yaml`` -> ``_cli``.
"""
