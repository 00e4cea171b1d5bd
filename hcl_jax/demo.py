"""A short demonstration of the losses (what `make train` runs until training lands).

Shows the three losses on random projections, a beta sweep in one vmapped call,
and that HCL stays finite at t = 0.05, beta = 6 in float32.
"""

import jax
import jax.numpy as jnp

from hcl_jax import losses


def main() -> None:
  z1, z2 = jax.random.normal(jax.random.key(0), (2, 64, 128))
  print("nt_xent:", float(losses.nt_xent_loss(z1, z2)))
  print("dcl:    ", float(losses.dcl_loss(z1, z2)))
  print("hcl:    ", float(losses.hcl_loss(z1, z2)))
  betas = jnp.array([0.0, 0.5, 1.0, 2.0, 6.0])
  sweep = jax.vmap(lambda b: losses.hcl_loss(z1, z2, beta=b))(betas)
  print("hcl over beta", betas.tolist(), "->", [round(float(v), 4) for v in sweep])
  print("hcl at t=0.05, beta=6 (NaN in exp space):",
        float(losses.hcl_loss(z1, z2, temperature=0.05, beta=6.0)))


if __name__ == "__main__":
  main()
