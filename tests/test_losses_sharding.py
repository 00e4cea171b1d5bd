"""The losses under every sharding style of today's JAX, on 8 CPU devices.

Explicit-axis meshes (``jax.make_mesh``'s default in JAX 0.10), with and
without ``jax.set_mesh``, inputs resharded inside jit, a 2-D mesh; Auto axes;
``jax.shard_map`` with ``axis_name``; ``jax.pmap``. Each must give the value
and the input gradients of the unsharded loss, which tests/test_losses.py
checks against float64 oracles.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from hcl_jax import losses

NUM_DEVICES = 8
B, D = 32, 16
LOSSES = {
    "hcl": functools.partial(losses.hcl_loss, temperature=0.2, tau_plus=0.1, beta=2.0),
    "dcl": functools.partial(losses.dcl_loss, temperature=0.2, tau_plus=0.1),
    "nt_xent": functools.partial(losses.nt_xent_loss, temperature=0.2),
}
RTOL = 2e-6


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
  if jax.device_count() < NUM_DEVICES:
    pytest.fail(f"needs {NUM_DEVICES} devices (tests/conftest.py sets XLA_FLAGS); "
                f"got {jax.device_count()}")


def explicit_mesh():
  mesh = jax.make_mesh((NUM_DEVICES,), ("data",), devices=jax.devices()[:NUM_DEVICES])
  assert mesh.axis_types == (AxisType.Explicit,)  # the default this file is about
  return mesh


def projections(seed=0):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(B, D)).astype(np.float32)
  z2 = (z1 + rng.normal(size=(B, D))).astype(np.float32)
  return z1, z2


def value_and_grads(loss_fn):
  return jax.value_and_grad(loss_fn, argnums=(0, 1))


def assert_matches_unsharded(result, loss_fn, z1, z2):
  value, grads = result
  ref_value, ref_grads = value_and_grads(loss_fn)(z1, z2)
  np.testing.assert_allclose(value, ref_value, rtol=RTOL)
  for g, r in zip(grads, ref_grads):
    assert g.shape == r.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=RTOL,
                               atol=RTOL * np.abs(np.asarray(r)).max())


@pytest.mark.parametrize("name,block_size", [("hcl", None), ("hcl", 5), ("dcl", None),
                                             ("nt_xent", None)])
def test_jit_on_explicit_mesh(name, block_size):
  mesh = explicit_mesh()
  loss_fn = functools.partial(LOSSES[name], block_size=block_size)
  z1, z2 = projections()
  sharding = NamedSharding(mesh, P("data"))
  a, b = jax.device_put(z1, sharding), jax.device_put(z2, sharding)
  result = jax.jit(value_and_grads(loss_fn))(a, b)
  assert_matches_unsharded(result, loss_fn, z1, z2)
  # The gradients keep the inputs' sharding.
  assert jax.typeof(result[1][0]).sharding.spec == P("data", None)


def test_set_mesh_and_reshard_inside_jit():
  mesh = explicit_mesh()
  loss_fn = LOSSES["hcl"]
  z1, z2 = projections(2)

  def sharded_inside(a, b):
    # Unsharded arguments, sharded by the caller's jitted code; z2 sharded on
    # its feature axis too (the loss lays it out like z1).
    a = jax.sharding.reshard(a, P("data"))
    b = jax.sharding.reshard(b, P(None, "data"))
    return loss_fn(a, b)

  with jax.set_mesh(mesh):
    result = jax.jit(value_and_grads(sharded_inside))(z1, z2)
    metrics = jax.jit(lambda a, b: losses.hcl_loss_and_metrics(
        jax.sharding.reshard(a, P("data")), jax.sharding.reshard(b, P("data")),
        temperature=0.2, tau_plus=0.1, beta=2.0)[1])(z1, z2)
  assert_matches_unsharded(result, loss_fn, z1, z2)
  _, ref_metrics = losses.hcl_loss_and_metrics(z1, z2, temperature=0.2, tau_plus=0.1, beta=2.0)
  for key in ref_metrics:
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=RTOL, atol=1e-7)


def test_two_dimensional_explicit_mesh():
  mesh = jax.make_mesh((4, 2), ("data", "model"), devices=jax.devices()[:NUM_DEVICES])
  loss_fn = LOSSES["hcl"]
  z1, z2 = projections(3)
  batch_over_both = NamedSharding(mesh, P(("data", "model")))
  batch_and_features = NamedSharding(mesh, P("data", "model"))
  result = jax.jit(value_and_grads(loss_fn))(jax.device_put(z1, batch_over_both),
                                             jax.device_put(z2, batch_and_features))
  assert_matches_unsharded(result, loss_fn, z1, z2)


def test_vmap_over_betas_and_learned_temperature_on_explicit_mesh():
  mesh = explicit_mesh()
  z1, z2 = projections(4)
  sharding = NamedSharding(mesh, P("data"))
  a, b = jax.device_put(z1, sharding), jax.device_put(z2, sharding)
  betas = jnp.asarray([0.0, 0.5, 2.0])
  with jax.set_mesh(mesh):
    sweep = jax.jit(jax.vmap(lambda beta, x, y: losses.hcl_loss(x, y, beta=beta),
                             in_axes=(0, None, None)))(betas, a, b)
    d_t = jax.jit(jax.grad(lambda t, x, y: losses.hcl_loss(x, y, temperature=t)))(0.3, a, b)
  ref_sweep = [losses.hcl_loss(z1, z2, beta=float(beta)) for beta in betas]
  np.testing.assert_allclose(sweep, ref_sweep, rtol=RTOL)
  ref_d_t = jax.grad(lambda t: losses.hcl_loss(z1, z2, temperature=t))(0.3)
  np.testing.assert_allclose(d_t, ref_d_t, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_jit_on_auto_mesh(name):
  mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:NUM_DEVICES])
  z1, z2 = projections(5)
  sharding = NamedSharding(mesh, P("data"))
  result = jax.jit(value_and_grads(LOSSES[name]))(jax.device_put(z1, sharding),
                                                  jax.device_put(z2, sharding))
  assert_matches_unsharded(result, LOSSES[name], z1, z2)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shard_map_on_explicit_mesh(name):
  # No psum of the gradients: each device's gradient is already its slice of
  # the global one (a psum would make it NUM_DEVICES times too large).
  mesh = explicit_mesh()
  z1, z2 = projections(6)
  sharding = NamedSharding(mesh, P("data"))
  local = value_and_grads(functools.partial(LOSSES[name], axis_name="data"))
  result = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data")),
                                 out_specs=(P(), (P("data"), P("data")))))(
                                     jax.device_put(z1, sharding), jax.device_put(z2, sharding))
  assert_matches_unsharded(result, LOSSES[name], z1, z2)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_pmap(name):
  z1, z2 = projections(7)
  shape = (NUM_DEVICES, B // NUM_DEVICES, D)
  fn = jax.pmap(value_and_grads(functools.partial(LOSSES[name], axis_name="i")), axis_name="i",
                devices=jax.devices()[:NUM_DEVICES])
  values, (g1, g2) = fn(z1.reshape(shape), z2.reshape(shape))
  np.testing.assert_allclose(values, np.full(NUM_DEVICES, values[0]))
  assert_matches_unsharded((values[0], (g1.reshape(B, D), g2.reshape(B, D))), LOSSES[name],
                           z1, z2)
