"""Config mistakes as one line naming the key, before anything heavy starts.

Every entry point that takes a config checks it here first:
``python -m hcl_jax.main`` (its ``--config`` flag and ``--config.KEY=VALUE``
overrides), ``python -m hcl_jax.evaluate`` (the run's saved config.json),
``python -m hcl_jax.reproduce`` (the table's config with the flags after
``--``) and the launcher's local check, which calls::

    config = config_check.load_and_validate("configs/digits.py", ["--config.loss.beta=2"])

Each raises :class:`ConfigError` (a ValueError) whose message is one line:

- an unknown key, in a file or an override: ``config.los: unknown key (did you
  mean config.loss?)``;
- a value of the wrong type: ``--config.loss.beta=abc: could not convert
  string to float: 'abc'``;
- a bad value: ``config.loss.beta must be a number >= 0; got -1.0.``;
- a config file that isn't there, or doesn't load.

The schema is ``configs/base.py`` (every key an image config may have, with
its default; ``configs/digits.py`` and ``configs/paper.py`` start from it:
:func:`base_config`). Config paths ``configs/NAME.py``, with or without a
``:ARG`` for its ``get_config`` (``configs/paper.py:dataset=cifar10,method=hcl``),
are found in the working directory first, then among the configs shipped
inside the package (``hcl_jax/configs`` in a wheel), then in the source tree,
so the commands of the README also work after a plain ``pip install``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from hcl_jax.config import values as checks
from hcl_jax.config import registry
from hcl_jax.config.loading import (  # noqa: F401  (the entry points' names: config_check.X)
    CONFIG_FLAG, ConfigError, _check_override_keys, _load, _schema, base_config, check_keys,
    config_dirs, config_overrides, load, parse_flags, resolve_config_path)

DATASETS = tuple(registry.DATASETS)
READOUTS = registry.READOUTS


def _value(config: Any, key: str) -> Any:
  for part in key.split("."):
    config = config[part]
  return config


def _positive_int(config: Any, key: str, minimum: int = 1) -> None:
  try:
    checks.int_at_least(f"config.{key}", _value(config, key), minimum)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _one_of(config: Any, key: str, allowed: Any) -> None:
  value = _value(config, key)
  if value not in allowed:
    raise ConfigError(f"config.{key} must be one of {allowed}; got {value!r}.")


def _finite(value: Any) -> bool:
  """A number (not a bool) that is neither inf nor NaN."""
  return checks.is_number(value) and math.isfinite(value)


def _number(config: Any, key: str, is_allowed: Any, allowed: str) -> None:
  """ConfigError unless ``config.key`` is a finite number (not a bool) with
  ``is_allowed(value)``; ``allowed`` says what is, for the message."""
  value = _value(config, key)
  if not _finite(value) or not is_allowed(value):
    raise ConfigError(f"config.{key} must be a finite number, {allowed}; got {value!r}.")


def _numbers(config: Any, key: str, length: int, is_allowed: Any, allowed: str) -> None:
  """As :func:`_number` for a tuple of ``length`` numbers, ``is_allowed(values)``."""
  value = _value(config, key)
  try:
    values = tuple(value)
  except TypeError:
    values = ()
  if (len(values) != length or not all(_finite(v) for v in values)
      or not is_allowed(values)):
    raise ConfigError(f"config.{key} must be {length} finite numbers, {allowed}; "
                      f"got {value!r}.")


def _probability(config: Any, key: str) -> None:
  _number(config, key, lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def _check_model(config: Any) -> None:
  _one_of(config, "model.name", registry.MODELS)
  _one_of(config, "model.stem", registry.STEMS)
  _number(config, "model.width_multiplier", lambda v: v > 0, "> 0")
  width = config.model.width_multiplier
  if round(64 * width) < 1:
    raise ConfigError(
        f"config.model.width_multiplier={width!r} gives no channels (64 * width < 0.5); "
        "use >= 1/64.")
  for key in ("model.projection_hidden_dim", "model.projection_dim"):
    _positive_int(config, key)


def _check_optimizer(config: Any) -> None:
  _one_of(config, "optimizer.name", registry.OPTIMIZERS)
  _number(config, "optimizer.learning_rate", lambda v: v > 0, "> 0")
  _number(config, "optimizer.weight_decay", lambda v: v >= 0, ">= 0")
  _number(config, "optimizer.warmup_epochs", lambda v: v >= 0, ">= 0")
  warmup = config.optimizer.warmup_epochs
  if config.optimizer.name == "lars" and warmup > config.num_epochs:
    raise ConfigError(
        f"config.optimizer.warmup_epochs ({warmup!r}) must not exceed config.num_epochs "
        f"({config.num_epochs!r}).")


def _check_loss(config: Any) -> None:
  _one_of(config, "loss.name", registry.LOSSES)
  _number(config, "loss.temperature", lambda v: v > 0, "> 0")
  _number(config, "loss.tau_plus", lambda v: 0 <= v < 1, "in [0, 1)")
  _number(config, "loss.beta", lambda v: v >= 0, ">= 0")
  _one_of(config, "loss.beta_anneal", registry.BETA_ANNEALS)
  _positive_int(config, "loss.block_size", minimum=0)


def _check_augment(config: Any) -> None:
  """The augmentation's values, as torchvision's transforms allow them."""
  _numbers(config, "augment.crop_scale", 2, lambda v: 0 < v[0] <= v[1] <= 1,
           "(low, high) with 0 < low <= high <= 1 (fractions of the image area)")
  _numbers(config, "augment.crop_ratio", 2, lambda v: 0 < v[0] <= v[1],
           "(low, high) with 0 < low <= high (aspect ratios)")
  for key in ("flip_prob", "jitter_prob", "grayscale_prob"):
    _probability(config, f"augment.{key}")
  for key in ("brightness", "contrast", "saturation"):
    _number(config, f"augment.{key}", lambda v: v >= 0, ">= 0 (jitter factor in [1-x, 1+x])")
  _number(config, "augment.hue", lambda v: 0 <= v <= 0.5, "in [0, 0.5]")
  _check_augment_blur(config.augment)


def _check_data(config: Any) -> None:
  """The input pipeline's values."""
  _positive_int(config, "data.shuffle_buffer")
  value = config.data.num_parallel_calls
  if not checks.is_int(value) or (value != -1 and value < 1):
    raise ConfigError(f"config.data.num_parallel_calls must be -1 (autotune) or an int >= 1; "
                      f"got {value!r}.")
  _positive_int(config, "data.threadpool_size", minimum=0)
  _numbers(config, "data.mean", 3, lambda v: True, "one per RGB channel")
  _numbers(config, "data.std", 3, lambda v: min(v) > 0, "one per RGB channel, each > 0")


def _check_eval(config: Any) -> None:
  """The evaluation's values: checked now, not after the pre-training."""
  for key in ("eval.knn_k", "eval.linear_epochs", "eval.linear_batch_size"):
    _positive_int(config, key)
  _number(config, "eval.knn_temperature", lambda v: v > 0, "> 0")
  _number(config, "eval.linear_learning_rate", lambda v: v > 0, "> 0")
  _number(config, "eval.linear_weight_decay", lambda v: v >= 0, ">= 0")
  _one_of(config, "eval.readout", READOUTS)
  _positive_int(config, "eval.image_size", minimum=0)


def check_batch_split(config: Any, num_devices: int) -> None:
  """ConfigError unless ``config.batch_size`` splits evenly over ``num_devices``."""
  if config.batch_size % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} must be a multiple of the number of devices "
        f"({num_devices}).")


def validate_run_config(config: Any, num_devices: int = 1) -> None:
  """Every check of a complete config's values that needs no data and no compilation.

  ConfigError naming the key. The model, optimizer and loss modules trust
  what passed here; :func:`validate` (keys, then this) is what entry points call.
  """
  _one_of(config, "dataset", DATASETS)
  if not isinstance(config.data_dir, str):
    raise ConfigError(
        f"config.data_dir must be a path (\"\" for TFDS's default); got {config.data_dir!r}.")
  _check_model(config)
  _check_optimizer(config)
  _check_loss(config)
  if not isinstance(config.mixed_precision, bool):
    raise ConfigError(
        f"config.mixed_precision must be True or False; got {config.mixed_precision!r}.")
  _positive_int(config, "batch_size", minimum=2)
  _positive_int(config, "num_epochs")
  check_batch_split(config, num_devices)
  for key in ("image_size", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps"):
    _positive_int(config, key)
  _positive_int(config, "seed", minimum=0)
  _check_eval(config)
  _check_data(config)
  size = config.model.bn_group_size
  if not checks.is_int(size) or size < 0 or size == 1 or (size and config.batch_size % size):
    raise ConfigError(
        f"config.model.bn_group_size must be 0 (statistics over the whole per-view batch) or "
        f"an int >= 2 dividing config.batch_size={config.batch_size}; got {size!r}.")
  _check_augment(config)
  _one_of(config, "on_nonfinite", registry.ON_NONFINITE)
  try:
    checks.parse_step_range(config.profile_steps)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_augment_blur(augment: Any) -> None:
  size = augment.blur_kernel_size
  if not checks.is_int(size) or size < 1 or size % 2 == 0:
    raise ConfigError(f"config.augment.blur_kernel_size must be an odd int >= 1 (1: no blur); "
                      f"got {size!r}.")
  prob = augment.blur_prob
  if not _finite(prob) or not 0 <= prob <= 1:
    raise ConfigError(f"config.augment.blur_prob must be in [0, 1]; got {prob!r}.")
  sigma = tuple(augment.blur_sigma)
  if len(sigma) != 2 or not all(_finite(v) for v in sigma) or not 0 < sigma[0] <= sigma[1]:
    raise ConfigError(f"config.augment.blur_sigma must be (low, high), finite, with "
                      f"0 < low <= high; got {sigma!r}.")


# Keys an older run's config.json may hold that nothing reads any more:
# dropped by validate, not refused, so that old workdirs still evaluate.
RETIRED_KEYS = ("data.prefetch",)


def _with_schema_values(config: dict, schema: dict) -> dict:
  """``schema`` with ``config``'s values in place of its own, group by group."""
  merged = dict(schema)
  for key, value in config.items():
    merged[key] = (_with_schema_values(value, schema[key]) if isinstance(schema[key], dict)
                   else value)
  return merged


def validate(config: Any, num_devices: int = 1) -> Any:
  """The run config's one check, at the entry point; returns the complete config.

  Unknown keys first (:func:`check_keys`; :data:`RETIRED_KEYS` are dropped);
  then the keys ``config`` lacks (an older run's config.json) take the
  schema's values, once, here, so that the library reads every key directly;
  then every value (:func:`validate_run_config`). Returns a new ConfigDict;
  ``config`` is not changed. ConfigError (one line, naming the key).
  """
  import ml_collections

  values = config.to_dict()
  for key in RETIRED_KEYS:
    group, leaf = key.split(".")
    if hasattr(values.get(group), "pop"):
      values[group].pop(leaf, None)
  schema = _schema()
  check_keys(values, schema)
  config = ml_collections.ConfigDict(_with_schema_values(values, schema.to_dict()))
  try:
    validate_run_config(config, num_devices)
  except ConfigError:
    raise
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise ConfigError(" ".join(str(e).split())) from None
  return config


def load_and_validate(path: str, overrides: Sequence[str] = (), num_devices: int = 1) -> Any:
  """The checked config of file ``path`` with ``--config.KEY=VALUE`` ``overrides``.

  Other flags among ``overrides`` (``--workdir``, ...) are ignored. Raises
  ConfigError (one line, naming the key or the file) for a missing file, an
  unknown key, a value of the wrong type or a bad value.
  """
  path = resolve_config_path(path)
  overrides = config_overrides(overrides)
  _check_override_keys(overrides, _load(path, ()))
  return validate(_load(path, overrides), num_devices)


