"""The datasets, losses and methods hcl_jax knows: one list each.

Everything that needs one of these lists imports it from here: the config
checks, the data sources, the paper configs (``configs/paper.py``), the train
step and ``python -m hcl_jax.reproduce``. This module imports nothing heavy
(no JAX, no TensorFlow), so the light entry points can use it. The config
files read their argument (``configs/paper.py:dataset=cifar10,method=hcl``)
against these lists with :func:`parse_config_arg`.

Adding an image dataset: one :class:`Dataset` entry below, plus its source if
TFDS doesn't have it (see ``hcl_jax/data/sources.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Collection


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One image dataset.

  Attributes:
    tfds_name: the TFDS builder's name (digits: built locally, never downloaded).
    pretrain_split: the split pre-training reads.
    train_split: the readout's (and the kNN bank's) training split.
    test_split: the readout's and kNN's test split.
    num_classes: label classes.
    pretrain_examples: examples in ``pretrain_split``.
    train_examples: examples in ``train_split``.
    image_size: the stored images' side; the published evaluation uses it
      (``test_transform`` has no resize).
    local: built by hcl_jax from a copy that ships with a package (no TFDS
      download, no data_dir needed).
  """
  tfds_name: str
  pretrain_split: str
  train_split: str
  test_split: str
  num_classes: int
  pretrain_examples: int
  train_examples: int
  image_size: int
  local: bool = False


DATASETS: dict[str, Dataset] = {
    # scikit-learn's 8x8 UCI digits, upsampled to config.image_size (16).
    "digits": Dataset("digits", "train", "train", "test", 10, 1_437, 1_437, 16, local=True),
    "cifar10": Dataset("cifar10", "train", "train", "test", 10, 50_000, 50_000, 32),
    "cifar100": Dataset("cifar100", "train", "train", "test", 100, 50_000, 50_000, 32),
    "stl10": Dataset("stl10", "train+unlabelled", "train", "test", 10, 105_000, 5_000, 96),
}

# config.loss.name: the three losses of hcl_jax.losses.
LOSSES = ("nt_xent", "dcl", "hcl")
# config.model.name (hcl_jax.models.MODELS builds each) and config.model.stem.
MODELS = ("resnet18", "resnet34", "resnet50")
STEMS = ("cifar", "imagenet")
# config.optimizer.name (hcl_jax.train.optim).
OPTIMIZERS = ("adam", "lars")
# config.on_nonfinite (hcl_jax.train.divergence): end the run, or drop the update.
ON_NONFINITE = ("stop", "skip")
# config.loss.beta_anneal (hcl_jax.train.step.beta_at_step): constant, or walked down to 0.
BETA_ANNEALS = ("none", "down")


@dataclasses.dataclass(frozen=True)
class Method:
  """A method of the paper as config.loss values."""
  loss: str        # config.loss.name
  tau_plus: float  # config.loss.tau_plus
  beta: float      # config.loss.beta


# beta = 0 for the two baselines: HCL with beta = 0 is DCL, and with tau+ = 0
# too it is SimCLR (docs/reference.md).
METHODS: dict[str, Method] = {
    "simclr": Method("nt_xent", 0.0, 0.0),
    "dcl": Method("dcl", 0.1, 0.0),
    "hcl": Method("hcl", 0.1, 1.0),
}

# config.eval.readout: the linear readout protocols (hcl_jax.evaluation.protocol).
READOUTS = ("fast", "augmented", "published")


def get(registry: dict, name: str, what: str):
  """``registry[name]``, or a ValueError naming ``name`` and what is allowed."""
  if name not in registry:
    raise ValueError(f"{what}={name!r}: unknown; expected one of {sorted(registry)}.")
  return registry[name]


def parse_config_arg(config: str, arg: str | None,
                     allowed: dict[str, Collection[str]]) -> dict[str, str]:
  """A config file's ``get_config(arg)`` text, ``"dataset=cifar10,method=hcl"``, as a dict.

  ``python -m hcl_jax.main --config configs/paper.py:dataset=cifar10,method=hcl``:
  ml_collections passes the text after the colon to ``get_config``. Every key
  of ``allowed`` must be given; a key or value that isn't allowed is a
  ValueError (one line) naming it, ``config`` and what is allowed.
  """
  given = f"{config}:{arg}" if arg else config
  values = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"{given}: {item!r} is not KEY=VALUE; keys: {', '.join(allowed)}.")
    if key not in allowed:
      raise ValueError(f"{given}: unknown key {key!r}; keys: {', '.join(allowed)}.")
    if value not in allowed[key]:
      raise ValueError(f"{given}: {key}={value!r} unknown; expected one of "
                       f"{list(allowed[key])}.")
    values[key] = value
  missing = [key for key in allowed if key not in values]
  if missing:
    example = ",".join(f"{key}={next(iter(allowed[key]))}" for key in allowed)
    raise ValueError(f"{given}: missing {', '.join(missing)} (e.g. "
                     f"{config}:{example}).")
  return values
