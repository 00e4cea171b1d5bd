"""hcl_jax: contrastive learning with hard negative samples in JAX/Flax."""

import importlib

__version__ = "0.1.0"
__all__ = ["losses"]


def __getattr__(name: str):
  # `hcl_jax.losses` on first use, not at import: the command-line entry points
  # (hcl_jax.main, evaluate, reproduce) report config mistakes before JAX loads.
  if name == "losses":
    return importlib.import_module("hcl_jax.losses")
  raise AttributeError(f"module 'hcl_jax' has no attribute {name!r}")
