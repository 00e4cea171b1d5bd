"""``python -m hcl_jax.evaluate --workdir DIR``: evaluate a run's latest checkpoint.

  python -m hcl_jax.evaluate --workdir workdirs/digits [--readout augmented]

Reads the run's ``DIR/config.json``, restores the newest readable checkpoint
without changing anything in ``DIR/checkpoints`` (an unreadable one is
skipped, never renamed: a training run may own it), and records the result
in ``DIR/results.json`` beside what the training run wrote there (every
field kept)::

  "evaluations": {"44": {"fast": {"linear_top1": 91.2, "knn_top1": 95.1,
                                  "time": "2026-12-01T07:00:00+00:00"}}}

keyed by checkpoint step, then readout protocol; evaluating again the same
step and protocol replaces only that entry. Flags are absl's, and set-up,
errors and exit codes are ``hcl_jax.main``'s (``hcl_jax.run.entry_point``: a
multi-process runtime, each process's log in ``DIR/logs``, one-line errors).
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

from absl import app
from absl import flags

# Before absl parses: entry_point imports hcl_jax.distributed, whose flags
# (--coordinator_address, ...) must exist by then.
from hcl_jax import distributed
from hcl_jax.run import entry_point
from hcl_jax.config import registry
from hcl_jax.run import files
from hcl_jax.run import workdir_fs
from hcl_jax.run import guard as run_guard
from hcl_jax.run.errors import RunError

EVALUATIONS_KEY = "evaluations"


_READOUT = flags.DEFINE_enum("readout", None, list(registry.READOUTS),
                            "Override config.eval.readout.")


def record_evaluation(results: dict[str, Any], step: int, protocol: str,
                      evaluation: dict[str, Any]) -> dict[str, Any]:
  """``results`` with ``evaluation`` stored under evaluations[step][protocol]."""
  out = dict(results)
  evaluations = dict(out.get(EVALUATIONS_KEY) or {})
  per_step = dict(evaluations.get(str(step)) or {})
  per_step[protocol] = {**evaluation, "time": datetime.datetime.now(
      datetime.timezone.utc).isoformat(timespec="seconds")}
  evaluations[str(step)] = per_step
  out[EVALUATIONS_KEY] = evaluations
  return out


def load_config(workdir: str, readout: str | None = None) -> Any:
  """The run's saved ``config.json``, ``readout`` (if given) as config.eval.readout, checked.

  Raises RunError (one line naming the file) for a missing or invalid config,
  and for a results.json that is not a JSON object: checked here, before the
  evaluation, so that a damaged file does not cost an evaluation.
  """
  import ml_collections

  from hcl_jax.config import check as config_check

  config_path = workdir_fs.as_path(workdir) / files.CONFIG_JSON
  if not config_path.exists():
    raise RunError(f"{config_path} does not exist: is {workdir!r} a training run's workdir?")
  config = ml_collections.ConfigDict(workdir_fs.read_json(config_path))
  if readout:
    config.eval.readout = readout
  try:
    config = config_check.validate(config)  # the saved config, before anything compiles
  except ValueError as e:
    raise RunError(f"{config_path}: {e}") from None
  run_guard.read_results(workdir)
  return config


def evaluate_workdir(workdir: str, readout: str | None = None) -> dict[str, Any]:
  """Evaluates ``workdir``'s newest readable checkpoint; returns the new results.json."""
  return _evaluate(workdir, load_config(workdir, readout))


def _evaluate(workdir: str, config: Any) -> dict[str, Any]:
  """``evaluate_workdir`` on the run's checked ``config``."""
  import jax

  from hcl_jax.evaluation import protocol as evaluate
  from hcl_jax import models
  from hcl_jax.train import optim
  from hcl_jax.train import step as train_step_lib
  from hcl_jax.run.checkpointing import Checkpointer
  from hcl_jax.distributed.mesh import make_mesh

  root = workdir_fs.as_path(workdir)
  mesh = make_mesh()
  model = models.create_model(config)
  image_shape = (config.image_size, config.image_size, 3)
  template = train_step_lib.create_train_state(model, optim.make_optimizer(config, 1),
                                               jax.random.key(config.seed), mesh, image_shape)
  # Orbax's set-up is the first cross-process collective: start it together.
  distributed.wait_for_all_processes("before_checkpointer")
  with Checkpointer(root / files.CHECKPOINTS_DIR, keep=config.keep_checkpoints,
                    save_every_steps=config.checkpoint_every_steps, read_only=True) as ckpt:
    restored = ckpt.restore_latest(template)
  if restored is None:
    raise RunError(f"no readable checkpoint in {root / 'checkpoints'}.")
  evaluation = evaluate.evaluate_encoder(config, model, restored.state, mesh)
  results_path = root / files.RESULTS_JSON
  results = run_guard.read_results(workdir)  # again: training may have written it since
  results = record_evaluation(results, restored.step, config.eval.readout, evaluation)
  if jax.process_index() == 0:
    workdir_fs.write_json(results_path, results)
  print(json.dumps({"step": restored.step, "protocol": config.eval.readout, **evaluation}),
        flush=True)
  return results


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir, readout = entry_point.WORKDIR.value, _READOUT.value
  if workdir is None:
    raise app.UsageError("--workdir is required.")

  def evaluate(config: Any) -> int:
    _evaluate(workdir, config)
    return 0

  entry_point.run(workdir, config=lambda: load_config(workdir, readout), work=evaluate,
                  phase="evaluation")


def run(argv: list[str] | None = None) -> None:
  """The command line entry point (absl)."""
  app.run(_main, argv=argv if argv is None else [sys.argv[0], *argv])


if __name__ == "__main__":
  run()
