"""Negatives from every device (axis_name) and the row blocks (block_size).

Every multi-device result is compared with the single-device loss on the
concatenated global batch, which test_losses.py checks against float64 oracles.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from hcl_jax import losses
from hcl_jax.distributed.mesh import DATA_AXIS, make_mesh

NUM_DEVICES = 8
HYPERS = dict(temperature=0.2, tau_plus=0.1, beta=2.0)
LOSSES = {
    "hcl": functools.partial(losses.hcl_loss, **HYPERS),
    "dcl": functools.partial(losses.dcl_loss, temperature=0.2, tau_plus=0.1),
    "nt_xent": functools.partial(losses.nt_xent_loss, temperature=0.2),
}


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < NUM_DEVICES:
    pytest.fail(f"needs {NUM_DEVICES} devices (tests/conftest.py sets XLA_FLAGS); got {jax.device_count()}")
  return make_mesh(jax.devices()[:NUM_DEVICES])


def projections(b, d=16, seed=0):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, d)).astype(np.float32)
  z2 = (z1 + rng.normal(size=(b, d))).astype(np.float32)
  return z1, z2


def single_device(loss_fn, z1, z2):
  return jax.value_and_grad(loss_fn, argnums=(0, 1))(z1, z2)


def assert_close(actual, expected, rtol):
  (value, grads), (ref_value, ref_grads) = actual, expected
  np.testing.assert_allclose(value, ref_value, rtol=rtol)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=rtol, atol=rtol * np.abs(r).max())


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("block_size", [None, 3])
def test_shard_map_equals_single_device(mesh, name, block_size):
  loss_fn = functools.partial(LOSSES[name], block_size=block_size)
  z1, z2 = projections(32)

  def local(a, b):
    # Each device differentiates the (replicated) global loss with respect to
    # its own rows; the all-gather's transpose delivers the other devices' terms.
    return jax.value_and_grad(functools.partial(loss_fn, axis_name=DATA_AXIS), argnums=(0, 1))(a, b)

  sharded = jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)),
      out_specs=(P(), (P(DATA_AXIS), P(DATA_AXIS)))))
  assert_close(sharded(z1, z2), single_device(LOSSES[name], z1, z2), rtol=2e-6)


def test_shard_map_loss_is_not_the_local_loss(mesh):
  # Guards against the classic bug (negatives never gathered): the local-only
  # loss over 4 rows differs from the global one.
  z1, z2 = projections(32)
  per_device = jax.jit(jax.shard_map(
      lambda a, b: losses.hcl_loss(a, b, **HYPERS)[None], mesh=mesh,
      in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=P(DATA_AXIS)))(z1, z2)
  assert not np.allclose(per_device, losses.hcl_loss(z1, z2, **HYPERS), rtol=1e-3)


def test_pmap_equals_single_device(mesh):
  z1, z2 = projections(32, seed=1)
  shape = (NUM_DEVICES, 32 // NUM_DEVICES, -1)
  fn = jax.pmap(
      jax.value_and_grad(functools.partial(losses.hcl_loss, axis_name="i", **HYPERS), argnums=(0, 1)),
      axis_name="i", devices=jax.devices()[:NUM_DEVICES])
  values, (g1, g2) = fn(z1.reshape(shape), z2.reshape(shape))
  ref_value, (r1, r2) = single_device(LOSSES["hcl"], z1, z2)
  np.testing.assert_allclose(values, np.full(NUM_DEVICES, ref_value), rtol=2e-6)
  grads = (np.asarray(g1).reshape(32, -1), np.asarray(g2).reshape(32, -1))
  assert_close((values[0], grads), (ref_value, (r1, r2)), rtol=2e-6)


@pytest.mark.parametrize("block_size", [None, 8])
def test_jit_with_named_sharding_equals_single_device(mesh, block_size):
  z1, z2 = projections(64, seed=2)
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  fn = jax.jit(jax.value_and_grad(
      functools.partial(losses.hcl_loss, block_size=block_size, **HYPERS), argnums=(0, 1)))
  result = fn(jax.device_put(z1, sharding), jax.device_put(z2, sharding))
  assert_close(result, single_device(LOSSES["hcl"], z1, z2), rtol=2e-6)


def test_metrics_are_global_under_shard_map(mesh):
  z1, z2 = projections(32, seed=3)
  z1[:4] = z2[:4]  # device 0's images have identical views: clamped at tau+ 0.9
  hypers = dict(temperature=0.1, tau_plus=0.9, beta=1.0)
  sharded = jax.jit(jax.shard_map(
      lambda a, b: losses.hcl_loss_and_metrics(a, b, axis_name=DATA_AXIS, **hypers),
      mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=P()))
  value, metrics = sharded(z1, z2)
  ref_value, ref_metrics = losses.hcl_loss_and_metrics(z1, z2, **hypers)
  np.testing.assert_allclose(value, ref_value, rtol=2e-6)
  assert 0.0 < float(ref_metrics["clamped_fraction"]) < 1.0
  for key in ref_metrics:
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# Tiling.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("block_size", [1, 5, 16, 48, 64, 1000])
def test_block_size_does_not_change_the_result(block_size):
  # 2B = 48 anchors: the default block (256) holds them all; 5 leaves a
  # partial last block, 48 and 1000 are one block.
  z1, z2 = projections(24, seed=4)
  for name, loss_fn in LOSSES.items():
    ref = single_device(loss_fn, z1, z2)
    blocked = jax.jit(jax.value_and_grad(functools.partial(loss_fn, block_size=block_size), argnums=(0, 1)))
    (value, grads) = blocked(z1, z2)
    np.testing.assert_allclose(value, ref[0], rtol=1e-6, err_msg=name)
    for g, r in zip(grads, ref[1]):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * np.abs(r).max(), err_msg=name)


def test_block_size_does_not_change_the_metrics():
  z1, z2 = projections(24, seed=5)
  value, metrics = losses.hcl_loss_and_metrics(z1, z2, block_size=7, **HYPERS)
  ref_value, ref_metrics = losses.hcl_loss_and_metrics(z1, z2, **HYPERS)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  for key in ref_metrics:
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-6, atol=1e-7)


def test_memory_is_linear_in_the_batch():
  # Compiled temporaries of loss + gradient: a few [block, 2B] blocks and
  # O(B D) buffers, never a (2B)^2 similarity matrix.
  def temp_bytes(b, block_size):
    z = jax.ShapeDtypeStruct((b, 128), jnp.float32)
    fn = jax.jit(jax.grad(functools.partial(losses.hcl_loss, block_size=block_size), argnums=(0, 1)))
    return fn.lower(z, z).compile().memory_analysis().temp_size_in_bytes

  for block_size in (None, 128):
    block = block_size or losses.DEFAULT_BLOCK_SIZE
    small, large = temp_bytes(1024, block_size), temp_bytes(2048, block_size)
    assert large < 8 * block * (2 * 2048) * 4 + 64 * 2048 * 128 * 4, block_size
    assert large < 2.5 * small, (block_size, small, large)  # linear: a (2B)^2 buffer would give 4x
    assert 2 * large < (2 * 2048) ** 2 * 4, block_size  # under half of one (2B)^2 matrix


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------
def test_bad_axis_name_is_a_clear_error(mesh):
  z1, z2 = projections(16)
  fn = jax.jit(jax.shard_map(
      lambda a, b: losses.hcl_loss(a, b, axis_name="model"), mesh=mesh,
      in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=P()))
  with pytest.raises(ValueError, match=r"axis_name='model' is not a mapped axis"):
    fn(z1, z2)


def test_axis_name_outside_shard_map_is_a_clear_error():
  z1, z2 = projections(8)
  with pytest.raises(ValueError, match=r"axis_name='data' is not a mapped axis"):
    losses.hcl_loss(z1, z2, axis_name=DATA_AXIS)


def test_mismatched_local_shapes_are_a_clear_error(mesh):
  z1, _ = projections(16)
  z2 = np.ones((16, 8), np.float32)
  fn = jax.jit(jax.shard_map(
      lambda a, b: losses.hcl_loss(a, b, axis_name=DATA_AXIS), mesh=mesh,
      in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=P()))
  with pytest.raises(ValueError, match=r"same shape.*\(2, 16\) and \(2, 8\)"):
    fn(z1, z2)


@pytest.mark.parametrize("block_size", [0, -4, 2.5, True, "64"])
def test_bad_block_size(block_size):
  z1, z2 = projections(8)
  with pytest.raises(ValueError, match=r"block_size must be None \(the default, 256\) or an integer >= 1; got"):
    losses.hcl_loss(z1, z2, block_size=block_size)


def test_hyperparameter_gradients_under_shard_map(mesh):
  # A learned temperature (or tau+, beta) replicated on every device gets the
  # single-device gradient, not a per-device share or world size times it.
  z1, z2 = projections(32, seed=6)
  hypers = jnp.array([0.2, 0.1, 2.0])

  def loss_fn(a, b, h, axis_name=None):
    return losses.hcl_loss(a, b, temperature=h[0], tau_plus=h[1], beta=h[2], axis_name=axis_name)

  def local(a, b, h):
    return jax.value_and_grad(functools.partial(loss_fn, axis_name=DATA_AXIS), argnums=(0, 2))(a, b, h)

  sharded = jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS), P()),
      out_specs=(P(), (P(DATA_AXIS), P()))))
  value, (grad_z1, grad_h) = sharded(z1, z2, hypers)
  ref_value, (ref_z1, ref_h) = jax.value_and_grad(loss_fn, argnums=(0, 2))(z1, z2, hypers)
  np.testing.assert_allclose(value, ref_value, rtol=2e-6)
  np.testing.assert_allclose(grad_z1, ref_z1, rtol=2e-6, atol=2e-6 * np.abs(ref_z1).max())
  np.testing.assert_allclose(grad_h, ref_h, rtol=1e-5)
