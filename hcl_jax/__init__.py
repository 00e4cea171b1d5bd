"""hcl_jax: contrastive learning with hard negative samples in JAX/Flax."""

from hcl_jax import losses

__version__ = "0.1.0"
__all__ = ["losses"]
