"""``python -m nytorch_fn.merge CONFIG.yml OUT_DIR`` (the ``nytorch-fn-merge`` command)."""

from .._merge._cli import cli

if __name__ == "__main__":
    cli()
