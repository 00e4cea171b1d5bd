"""One InfoGraph run: pre-train on a TU dataset, SVC-evaluate, checkpoint, resume.

What the published deepinfomax.py does for one (repeat, beta): shuffle the
dataset once (here with ``config.seed``), batch it in that fixed order every
epoch, Adam 1e-3 on the local-global loss, and score the frozen graph
embeddings with the SVC protocol at epoch 0, every ``eval_every_epochs`` and
at the end (the stored result). The workdir gets ``checkpoints/`` (orbax, via
hcl_jax.run.checkpointing), ``metrics.jsonl`` (+ TensorBoard, progress bar, via
hcl_jax.run.metrics_log), ``config.json`` and, at the end, ``results.json``.
Started again with the same workdir a run resumes from its latest checkpoint
(the SVC scores so far, and a stopped epoch's loss sum, travel in the
checkpoint's JSON) and ends as one that went straight through; a finished
run returns its results.json. Around its steps a graph run lives as an image
run does (``hcl_jax.run.lifecycle``): the workdir's lock, ``IDENTITY_KEYS``
stored in every checkpoint and a changed one refused, SIGTERM / SIGINT save
and stop (the command line exits 75 / 130), metrics.jsonl flushed with every
checkpoint, the checkpoints' integrity rules, wall time over attempts.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from hcl_jax.run import lifecycle
from hcl_jax.graph import evaluate_svc
from hcl_jax.graph import losses
from hcl_jax.graph import model as model_lib
from hcl_jax.graph import tu_data
from hcl_jax.graph.config import DATASETS

# The config keys that make two graph runs different experiments (a prefix
# covers the keys below it): stored in every checkpoint, and a rerun with
# others refuses (``hcl_jax.run.lifecycle``). Free to change: num_epochs,
# data_dir, evaluation, checkpointing and display settings.
IDENTITY_KEYS = ("dataset", "batch_size", "seed", "hidden_dim", "num_layers", "learning_rate",
                 "loss")
RUN_KIND = lifecycle.RunKind("graph", IDENTITY_KEYS, keeps_results=True)


def validate_config(config: Any) -> None:
  """ValueError naming the bad key; call before loading anything."""
  if config.get("dataset") not in DATASETS:
    raise ValueError(f"config.dataset={config.get('dataset')!r}: expected one of {DATASETS}.")
  for key in ("batch_size", "num_epochs", "hidden_dim", "num_layers", "eval_every_epochs",
              "checkpoint_every_epochs", "keep_checkpoints", "svc_folds", "svc_inner_folds"):
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{key}={value!r}: must be an int >= 1.")
  if config.batch_size < 2:
    raise ValueError(f"config.batch_size={config.batch_size}: must be >= 2.")
  seed = config.get("seed")
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f"config.seed={seed!r}: must be an int >= 0.")
  lr = config.get("learning_rate")
  if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
    raise ValueError(f"config.learning_rate={lr!r}: must be a number > 0.")
  try:
    losses.check_options(measure=config.loss.measure, beta=config.loss.beta,
                         tau_plus=config.loss.tau_plus, mask_mode=config.loss.mask_mode)
  except ValueError as e:
    raise ValueError(f"config.loss.{e}") from None
  if config.progress not in ("auto", "bar", "lines", "none"):
    raise ValueError(f"config.progress={config.progress!r}: expected auto|bar|lines|none.")


def create_state(model: model_lib.InfoGraph, tx: optax.GradientTransformation,
                 batch: tu_data.GraphBatch, seed: int) -> dict[str, Any]:
  variables = model_lib.init_variables(model, batch, jax.random.key(seed))
  params = variables["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "batch_stats": variables["batch_stats"], "opt_state": tx.init(params)}


@functools.lru_cache(maxsize=None)
def make_train_step(hidden_dim: int, num_layers: int, learning_rate: float, measure: str,
                    beta_is_zero: bool, tau_plus: float, mask_mode: str) -> Callable:
  """The jitted (state, batch, beta) -> (state, loss); cached, so runs in one
  process share compilations (beta is traced: one compilation for all beta > 0)."""
  model = model_lib.InfoGraph(hidden_dim, num_layers)
  tx = optax.adam(learning_rate)

  def loss_fn(params, batch_stats, batch, beta):
    (l, g), updates = model.apply({"params": params, "batch_stats": batch_stats}, batch,
                                  train=True, mutable=["batch_stats"])
    loss = losses.local_global_loss(
        l, g, batch.node_graph, batch.node_mask, batch.graph_mask, measure=measure,
        beta=0.0 if beta_is_zero else beta, tau_plus=tau_plus, mask_mode=mask_mode)
    return loss, updates["batch_stats"]

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, batch, beta):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], batch, beta)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
            "batch_stats": batch_stats, "opt_state": opt_state}, loss

  return train_step


@functools.lru_cache(maxsize=None)
def make_embed(hidden_dim: int, num_layers: int) -> Callable:
  model = model_lib.InfoGraph(hidden_dim, num_layers)
  return jax.jit(lambda variables, batch: model.apply(variables, batch,
                                                      method=model_lib.InfoGraph.embed))


def train_and_evaluate(config: Any, workdir: str, *,
                       dataset: tu_data.GraphDataset | None = None,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Runs (or resumes, or returns the finished) run; returns results.json's
  dict, or ``{"stopped_at_step", "signal"}`` when SIGTERM / SIGINT stopped it
  after a checkpoint (``hcl_jax.run.lifecycle.exit_code``: 75 / 130).

  Holds ``workdir``'s lock throughout; refuses checkpoints of another
  ``IDENTITY_KEYS`` unless ``allow_config_change`` (``hcl_jax.run.lifecycle``).
  """
  from hcl_jax.run import guard as run_guard
  from hcl_jax.run import errors as run_errors

  validate_config(config)
  if jax.process_count() > 1:
    raise run_errors.RunError(f"graph runs use one process; this is one of {jax.process_count()}.")
  with run_guard.hold_workdir(workdir, is_main=True) as lock:
    return _train_and_evaluate(config, workdir, lock, dataset, allow_config_change)


def _train_and_evaluate(config: Any, workdir: str, lock: Any,
                        dataset: tu_data.GraphDataset | None,
                        allow_config_change: bool) -> dict[str, Any]:
  from hcl_jax.run import lifecycle
  from hcl_jax.run.metrics_log import MetricLogger

  if dataset is None:
    dataset = tu_data.load_tu_dataset(config.dataset, config.data_dir or None)
  order = tu_data.shuffled_order(len(dataset), config.seed)
  batches = tu_data.make_batches(dataset, order, config.batch_size, shapes="two")
  steps_per_epoch = len(batches)
  graphs_per_step = [b.num_graphs for b in batches]
  total_steps = config.num_epochs * steps_per_epoch
  run = lifecycle.Run(RUN_KIND, config, workdir, lock, keep=config.keep_checkpoints,
                      save_every_steps=config.checkpoint_every_epochs * steps_per_epoch,
                      allow_config_change=allow_config_change)
  done = run.finished_results(total_steps)
  if done is not None:
    return done
  batches = [jax.device_put(b) for b in batches]   # once: every epoch reuses them

  model = model_lib.InfoGraph(config.hidden_dim, config.num_layers)
  tx = optax.adam(config.learning_rate)
  state = create_state(model, tx, batches[0], config.seed)
  beta = float(config.loss.beta)
  train_step = make_train_step(config.hidden_dim, config.num_layers,
                               float(config.learning_rate), config.loss.measure, beta == 0,
                               float(config.loss.tau_plus), config.loss.mask_mode)
  embed = make_embed(config.hidden_dim, config.num_layers)

  def evaluate(state, epoch: int) -> float:
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    x, y = evaluate_svc.embed_all(lambda b: embed(variables, b), batches)
    return evaluate_svc.svc_accuracy(x, y, seed=config.seed * 1000 + epoch,
                                     folds=config.svc_folds, inner_folds=config.svc_inner_folds)

  # The SVC scores so far, and the loss sum of a stop's unfinished epoch.
  svc, epoch_loss = {}, 0.0
  restored = run.resume(state, total_steps)
  start_step = run.start_step
  if restored is not None:
    state = restored.state
    svc = dict(restored.extra["svc"])
    epoch_loss = float(restored.extra.get("epoch_loss", 0.0))
  logger = MetricLogger(workdir, total_steps=total_steps, config=config, start_step=start_step,
                        tensorboard=config.tensorboard, progress=config.progress)
  if not start_step:
    logger.write(f"InfoGraph {config.loss.measure} beta={beta:g} on {config.dataset} "
                 f"({len(dataset)} graphs, {dataset.num_features} features, "
                 f"{dataset.feature_kind}): {config.num_epochs} epochs x {steps_per_epoch} "
                 f"batches of {config.batch_size} graphs, seed {config.seed}.")
  with run.training(logger):
    if "0" not in svc:
      svc["0"] = evaluate(state, 0)
      logger.write(f"SVC accuracy at epoch 0: {svc['0']:.2f}%")
    beta_arg = jnp.float32(beta)
    for step in range(start_step + 1, total_steps + 1):
      batch = batches[(step - 1) % steps_per_epoch]
      state, loss = train_step(state, batch, beta_arg)
      # The published log: the mean over the epoch's batches of loss * n_graphs.
      epoch_loss += float(loss) * graphs_per_step[(step - 1) % steps_per_epoch]
      if step % steps_per_epoch == 0:
        epoch = step // steps_per_epoch
        record = {"epoch": epoch, "loss": epoch_loss / steps_per_epoch, "beta": beta}
        if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
          svc[str(epoch)] = record["svc_accuracy"] = evaluate(state, epoch)
        logger.log(step, record)
        epoch_loss = 0.0
      if run.end_of_step(step, state, {"svc": svc, "epoch_loss": epoch_loss}):
        break
  stopped = run.training_ended()
  if stopped is not None:
    return stopped
  final_epoch = str(config.num_epochs)
  results = run.write_results({
      "dataset": config.dataset, "measure": config.loss.measure, "beta": beta,
      "tau_plus": float(config.loss.tau_plus), "mask_mode": config.loss.mask_mode,
      "seed": config.seed, "epochs": config.num_epochs, "steps": total_steps,
      "svc_accuracy": svc[final_epoch], "svc_accuracy_epoch0": svc["0"],
      "svc_accuracy_by_epoch": svc,
  })
  logger.write(f"SVC accuracy: {svc[final_epoch]:.2f}% after {config.num_epochs} epochs "
               f"vs {svc['0']:.2f}% at epoch 0 ({results['wall_time_s']:.0f} s).")
  logger.close()
  return results
