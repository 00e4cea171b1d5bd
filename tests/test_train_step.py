"""The sharded train step: 1 vs 8 devices, tracing, learning, config checks."""

import os
from unittest import mock

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.digits import get_config
from hcl_jax.config import check as config_check
from hcl_jax.distributed import mesh as mesh_lib
from hcl_jax import models
from hcl_jax.train import optim
from hcl_jax.train import step as ts

import support  # tests/ is on sys.path under pytest

BATCH, SIZE = 16, 8


def _config(**loss):
  config = get_config()
  config.batch_size = BATCH
  config.num_epochs = 18
  config.model.projection_hidden_dim, config.model.projection_dim = 16, 8
  config.loss.update(loss)
  return config


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32)
          for k in ("view1", "view2")}


STEPS = 4
# bf16 compute vs float32, the same STEPS steps (test_bf16_step_close_to_float32):
# measured 2.0e-3 (loss, relative, worst step) and 0.27 (the whole update,
# relative; cosine 0.965); the bounds are 3x and ~2x those.
BF16_LOSS_RTOL = 6e-3
BF16_UPDATE_RTOL = 0.5


def _init_host_state(config, model):
  """create_train_state once (its jit compile is the slow part), kept on the host."""
  mesh = mesh_lib.make_mesh(jax.devices()[:8])
  state = ts.create_train_state(model, optim.make_optimizer(config, 1), jax.random.key(0), mesh,
                                (SIZE, SIZE, 3))
  assert state.params["encoder"]["stem_conv"]["kernel"].sharding.is_fully_replicated
  return jax.device_get(state)


def _run(config, num_devices, host_state, model, steps=STEPS, count_traces=False):
  """``steps`` steps on one fixed batch; returns (final state, metrics per step, step fn)."""
  mesh = mesh_lib.make_mesh(jax.devices()[:num_devices])
  # The step's optimizer is the state's: this config's, as a run builds it.
  state = jax.device_put(host_state.replace(tx=optim.make_optimizer(config, 2)),
                         mesh_lib.replicated(mesh))
  build = ts.build_train_step
  with mock.patch.object(ts, "build_train_step", lambda *a: chex.assert_max_traces(
      build(*a), n=1) if count_traces else build(*a)):
    step = ts.make_train_step(config, mesh, steps_per_epoch=2, model=model)
  history = []
  for _ in range(steps):
    # A fresh copy of the batch every call: new arrays must not retrace.
    batch = jax.device_put(_batch(7), mesh_lib.batch_sharding(mesh))
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history, step


@pytest.fixture(scope="module")
def runs():
  config = _config()
  config.optimizer.learning_rate = 3e-3
  model = support.tiny_model()
  host_state = _init_host_state(config, model)
  return {
      "config": config,
      "host_state": host_state,
      1: _run(config, 1, host_state, model),
      8: _run(config, 8, host_state, model, count_traces=True),
  }


@pytest.mark.xdist_group("train_step_runs")
def test_one_and_eight_devices_agree(runs):
  assert len(jax.devices()) >= 8
  (state1, hist1, _), (state8, hist8, _) = runs[1], runs[8]
  for m1, m8 in zip(hist1, hist8):
    for key in m1:
      np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-6, err_msg=key)
  chex.assert_trees_all_close(state1.params, state8.params, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(state1.batch_stats, state8.batch_stats, rtol=1e-4, atol=1e-6)
  assert int(state8.step) == STEPS
  assert set(hist1[0]) == {"loss", "clamped_fraction", "positive_similarity",
                           "negative_similarity", "beta", "lr", "grad_norm", "nonfinite"}
  # The parameters moved (the equality is not vacuous).
  kernel = runs["host_state"].params["head"]["out"]["kernel"]
  assert np.abs(state8.params["head"]["out"]["kernel"] - kernel).max() > 1e-4


@pytest.mark.xdist_group("train_step_runs")
def test_step_on_a_default_explicit_mesh_agrees(runs):
  # jax.make_mesh's default axes are Explicit; the step runs Auto inside.
  mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
  assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
  state = jax.device_put(runs["host_state"], mesh_lib.replicated(mesh))
  step = ts.make_train_step(runs["config"], mesh, steps_per_epoch=2, model=support.tiny_model())
  for expected in runs[1][1][:2]:
    state, metrics = step(state, jax.device_put(_batch(7), mesh_lib.batch_sharding(mesh)))
    for key in expected:
      np.testing.assert_allclose(metrics[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.xdist_group("train_step_runs")
def test_step_traced_once(runs):
  # The 8-device run wrapped the pure step in chex.assert_max_traces(n=1)
  # (which raises on a second trace) and called it STEPS times.
  step = runs[8][2]
  assert step._cache_size() == 1


@pytest.mark.xdist_group("train_step_runs")
def test_loss_decreases_on_fixed_batch(runs):
  losses = [float(m["loss"]) for m in runs[8][1]]
  assert losses[-1] < losses[0] - 0.05, losses
  assert all(float(m["beta"]) == 1.0 for m in runs[8][1])
  assert all(float(m["lr"]) == pytest.approx(3e-3) for m in runs[8][1])


@pytest.mark.xdist_group("train_step_runs")
def test_bf16_stays_finite(runs):
  config = _config()
  config.mixed_precision = True
  model = support.tiny_model(dtype=jnp.bfloat16)
  state, history, _ = _run(config, 2, runs["host_state"], model, steps=2)
  assert all(np.isfinite(m["loss"]) for m in history)
  leaves = jax.tree.leaves(state.params)
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)   # float32 master params
  assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
  assert models.create_model(config).encoder.dtype == jnp.bfloat16


@pytest.mark.parametrize("section,key,value", [
    ("model", "name", "vgg"),
    ("model", "stem", "huge"),
    ("model", "width_multiplier", -1.0),
    ("optimizer", "name", "sgd"),
    ("optimizer", "learning_rate", 0.0),
    ("optimizer", "weight_decay", -1.0),
    ("loss", "name", "triplet"),
    ("loss", "temperature", 0.0),
    ("loss", "tau_plus", 1.0),
    ("loss", "beta", -0.5),
    ("loss", "beta_anneal", "up"),
])
def test_bad_config_rejected_before_compiling(section, key, value, monkeypatch):
  # The one check of a run config (config_check.validate, at the entry
  # point); make_train_step trusts what passed it.
  config = _config()
  config[section][key] = value
  def no_jit(*args, **kwargs):
    raise AssertionError("compiled before validating the config")
  monkeypatch.setattr(jax, "jit", no_jit)
  with pytest.raises(ValueError, match=f"config.{section}.{key}"):
    config_check.validate(config)


def test_batch_not_divisible_by_devices_rejected():
  config = _config()
  config.batch_size = 12
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    ts.make_train_step(config, mesh_lib.make_mesh(jax.devices()[:8]), 4, support.tiny_model())


def _published_beta_per_epoch(beta, epochs):
  """The published training loop's beta bookkeeping, replayed (1-based epochs)."""
  n_steps = 9
  betas = iter(np.linspace(beta, 0, n_steps))
  used = []
  for epoch in range(1, epochs + 1):
    used.append(beta)                     # train(...) runs with the current beta
    if epoch % int(epochs / n_steps) == 0:
      beta = next(betas)
  return used


def test_beta_annealing_schedule():
  config = _config(beta=0.8, beta_anneal="down")
  config.num_epochs = 18
  steps_per_epoch = 3
  by_hand = [0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.5,
             0.4, 0.4, 0.3, 0.3, 0.2, 0.2, 0.1, 0.1]
  np.testing.assert_allclose(_published_beta_per_epoch(0.8, 18), by_hand, atol=1e-12)
  betas = jax.jit(lambda s: ts.beta_at_step(config, s, steps_per_epoch))(
      jnp.arange(18 * steps_per_epoch))
  np.testing.assert_allclose(betas, np.repeat(by_hand, steps_per_epoch), atol=1e-6)
  # A length that is not a multiple of 9 (the published 400 epochs: period 44).
  config.num_epochs = 400
  betas = ts.beta_at_step(config, jnp.arange(400), 1)
  np.testing.assert_allclose(betas, _published_beta_per_epoch(0.8, 400), atol=1e-6)
  config.loss.beta_anneal = "none"
  assert float(ts.beta_at_step(config, 10**6, 1)) == pytest.approx(0.8)


def test_adam_is_l2_regularised_adam_not_adamw():
  config = _config()
  config.optimizer.weight_decay = 0.5
  tx = optim.make_optimizer(config, 10)
  schedule = tx.schedule
  p, g = jnp.array([2.0, -1.0]), jnp.array([0.1, 0.3])
  updates, _ = tx.update(g, tx.init(p), p)
  g_l2 = np.array([0.1 + 1.0, 0.3 - 0.5])       # gradient + wd * param
  # First Adam step: m_hat = g, v_hat = g^2 -> -lr * g / (|g| + eps).
  np.testing.assert_allclose(updates, -1e-3 * g_l2 / (np.abs(g_l2) + 1e-8), rtol=1e-5)
  assert float(schedule(123)) == pytest.approx(1e-3)


def test_lars_warmup_cosine_schedule_and_masks():
  config = _config()
  config.optimizer.name, config.optimizer.learning_rate = "lars", 0.6
  config.optimizer.warmup_epochs = 2
  config.num_epochs = 10
  tx = optim.make_optimizer(config, steps_per_epoch=5)   # warmup 10, total 50
  schedule = tx.schedule
  assert float(schedule(0)) == pytest.approx(0.0)
  assert float(schedule(5)) == pytest.approx(0.3)
  assert float(schedule(10)) == pytest.approx(0.6)
  assert float(schedule(30)) == pytest.approx(0.6 * 0.5 * (1 + np.cos(np.pi * 20 / 40)))
  assert float(schedule(50)) == pytest.approx(0.0, abs=1e-7)
  params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}
  grads = {"kernel": jnp.full((3, 3), 0.1), "bias": jnp.full((3,), 0.1)}
  state = tx.init(params)
  for _ in range(6):
    updates, state = tx.update(grads, state, params)
  # Momentum is applied after the lr (optax.lars): u_t = -sum_k 0.9^k lr_{t-k} g.
  lr_weighted = sum(0.9**k * float(schedule(5 - k)) for k in range(6))
  # bias: no trust ratio, no decay.
  np.testing.assert_allclose(updates["bias"], -0.1 * lr_weighted, rtol=1e-5)
  # kernel: trust ratio 1e-3 * ||p|| / ||g + wd p|| (= 1e-3 * 3 / 0.3 here).
  trust = 1e-3 * 3.0 / np.linalg.norm(np.full((3, 3), 0.1) + 1e-6)
  np.testing.assert_allclose(updates["kernel"], -(0.1 + 1e-6) * trust * lr_weighted, rtol=1e-4)


@pytest.fixture(scope="module")
def bf16_run(runs):
  """The float32 8-device run's STEPS steps again with bf16 compute."""
  config = runs["config"].copy_and_resolve_references()
  config.mixed_precision = True
  state, history, _ = _run(config, 8, runs["host_state"], support.tiny_model(dtype=jnp.bfloat16))
  return state, history


@pytest.mark.xdist_group("train_step_runs")
def test_bf16_step_close_to_float32(runs, bf16_run):
  # bf16 rounds every activation by up to 2^-9 = 0.2% (relative), and Adam
  # normalises each update, so small, noisy gradients move as much as large
  # ones: the update (final - initial params) differs more than the loss.
  # Bounds: BF16_LOSS_RTOL, BF16_UPDATE_RTOL.
  state, history = bf16_run
  float32_state, float32_history, _ = runs[8]
  for m, m32 in zip(history, float32_history):
    assert abs(float(m["loss"]) - float(m32["loss"])) <= BF16_LOSS_RTOL * abs(float(m32["loss"]))
  flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64))
                                      for x in jax.tree.leaves(tree)])
  initial = flat(runs["host_state"].params)
  update, update32 = flat(state.params) - initial, flat(float32_state.params) - initial
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  assert np.linalg.norm(update - update32) <= BF16_UPDATE_RTOL * np.linalg.norm(update32)


@pytest.mark.xdist_group("train_step_runs")
def test_bf16_compute_keeps_float32_master_weights(runs, bf16_run):
  # float32 master weights accumulate updates below bf16's resolution, so
  # after STEPS Adam steps almost no moved parameter is a bf16 number (a
  # float32 is one with probability 2^-16: its low 16 mantissa bits all 0;
  # measured: 0 of the tiny net's moved parameters). Weights kept in bf16
  # (or rounded to it each step, then stored as float32) are all bf16 numbers.
  state, _ = bf16_run
  initial = np.concatenate([np.ravel(x) for x in jax.tree.leaves(runs["host_state"].params)])
  final = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)])
  assert final.dtype == np.float32
  moved = final != initial
  assert moved.mean() > 0.9
  as_bf16 = np.asarray(jnp.asarray(final[moved]).astype(jnp.bfloat16).astype(jnp.float32))
  assert np.mean(as_bf16 == final[moved]) < 0.01


class _Bf16Projection(nn.Module):
  """A "model" whose bf16 projections are exactly reproducible: one bf16
  product per element (exact in float32, rounded once), so any program
  computes the same values, unlike a ResNet whose bf16 rounding points move
  with XLA's fusion (measured: 4e-4 relative in the loss between the step and
  a jitted forward pass of the tiny ResNet)."""

  @nn.compact
  def __call__(self, x, train, num_views=1, bn_groups=1):
    w = self.param("w", nn.initializers.normal(1.0), (8,), jnp.float32)
    self.variable("batch_stats", "unused", jnp.zeros, (1,))
    z = x.reshape(x.shape[0], -1)[:, :8].astype(jnp.bfloat16) * w.astype(jnp.bfloat16)
    return z, z


def test_bf16_projections_give_the_float32_loss_of_their_values():
  # Mixed precision computes the loss in float32 from the bf16 projections:
  # the step's loss is the float64 oracle's on those bf16 values to float32
  # accuracy (measured 2e-8 relative; bound 1e-6). A loss computed in bf16
  # is off by ~2^-9 = 2e-3.
  from test_losses import oracle_loss  # tests/ is on sys.path under pytest

  config = _config()
  config.mixed_precision = True
  model = _Bf16Projection()
  host_state = jax.device_get(ts.create_train_state(
      model, optim.make_optimizer(config, 1), jax.random.key(0),
      mesh_lib.make_mesh(jax.devices()[:1]), (SIZE, SIZE, 3)))
  _, history, _ = _run(config, 1, host_state, model, steps=1)
  variables = {"params": host_state.params, "batch_stats": host_state.batch_stats}
  z = np.asarray(model.apply(variables, ts.stack_views(_batch(7)), True)[1], np.float64)
  assert np.all(np.asarray(jnp.asarray(z, jnp.bfloat16), np.float64) == z)  # bf16 values
  z = z.reshape(BATCH, 2, -1)
  expected = oracle_loss(z[:, 0], z[:, 1], 0.5, 0.1, 1.0)
  assert abs(float(history[0]["loss"]) - expected) <= 1e-6 * abs(expected)


def test_lars_through_a_real_train_step():
  # One LARS step of the real train step on the tiny ResNet (conv and dense
  # kernels; BatchNorm scales and biases and the head's bias, all 1-D), from
  # one state, at weight decay 0 and 0.5. First step: the momentum trace is
  # 0 and lr is the peak (no warmup), so a kernel moves by exactly
  # lr * 1e-3 * ||p|| (the trust ratio), whatever its gradient; a 1-D
  # parameter moves by -lr * g: the same at both decays (no decay), and not
  # by the trust-ratio norm (no trust ratio).
  config = _config()
  config.optimizer.name, config.optimizer.learning_rate = "lars", 0.5
  config.optimizer.warmup_epochs = 0
  model = support.tiny_model()
  host_state = _init_host_state(config, model)
  initial = jax.tree_util.tree_leaves_with_path(host_state.params)
  updates = {}
  for weight_decay in (0.0, 0.5):
    config.optimizer.weight_decay = weight_decay
    state, history, _ = _run(config, 1, host_state, model, steps=1)
    assert float(history[0]["lr"]) == pytest.approx(0.5)
    updates[weight_decay] = [np.asarray(p, np.float64) - np.asarray(p0, np.float64)
                             for (_, p0), p in zip(initial, jax.tree.leaves(state.params))]
  kinds = set()
  for (path, p0), u0, u5 in zip(initial, updates[0.0], updates[0.5]):
    name = jax.tree_util.keystr(path)
    trust_norm = 0.5 * 1e-3 * np.linalg.norm(p0)
    if p0.ndim > 1:
      kinds.add("kernel")
      for u in (u0, u5):
        np.testing.assert_allclose(np.linalg.norm(u), trust_norm, rtol=1e-4, err_msg=name)
      assert np.linalg.norm(u5 - u0) > 1e-3 * np.linalg.norm(u0), name  # decay applied
    else:
      kinds.add(path[-1].key)
      np.testing.assert_allclose(u5, u0, rtol=1e-5, atol=1e-9, err_msg=name)
      if np.any(p0 != 0):  # BN scales (ones); zero-init biases have no trust ratio anyway
        assert abs(np.linalg.norm(u0) / trust_norm - 1) > 0.1, name
  assert kinds == {"kernel", "scale", "bias"}
