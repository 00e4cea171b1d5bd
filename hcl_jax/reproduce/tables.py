"""The image tables: their cells, the published numbers, each run's config and FLOPs.

A table is one dataset of ``hcl_jax.config.registry.DATASETS`` with six cells (the
rows of the paper's STL-10 table): SimCLR; Debiased (tau+ 0.1); Hard (tau+
0.1) with beta 0.5, 1, 2, 6. A cell is a method of ``hcl_jax.config.registry.METHODS``
(its loss and tau+) and a beta. Each run's config is the method's config,
selected by argument: ``configs/paper.py:dataset=D,method=M`` (the published
settings and evaluation protocol), or for the digits demo ``configs/digits.py``
(its small net and fast readout) with the method's loss as flags.
"""

from __future__ import annotations

import dataclasses

from hcl_jax.config import registry

# Every image dataset is a table; digits is the cheap demo of the machinery.
TABLES = tuple(registry.DATASETS)
DEMO_TABLE = "digits"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One row of a table: a method and its beta."""
  name: str       # workdir component
  label: str      # as in the paper's table
  method: str     # a key of hcl_jax.config.registry.METHODS: loss.name and tau+
  beta: float     # config.loss.beta

  @property
  def tau_plus(self) -> float:
    return registry.METHODS[self.method].tau_plus


CELLS: tuple[Cell, ...] = (
    Cell("simclr", "SimCLR", "simclr", 0.0),
    Cell("debiased", "Debiased", "dcl", 0.0),
    Cell("hard_beta0.5", "Hard", "hcl", 0.5),
    Cell("hard_beta1", "Hard", "hcl", 1.0),
    Cell("hard_beta2", "Hard", "hcl", 2.0),
    Cell("hard_beta6", "Hard", "hcl", 6.0),
)
BASELINE = "simclr"   # the paired differences are against this cell

# Linear readout top-1 (%) from the published code's README (docs/reference.md).
PUBLISHED: dict[str, dict[str, float]] = {
    "stl10": {"simclr": 80.15, "debiased": 84.26, "hard_beta0.5": 86.38,
              "hard_beta1": 87.44, "hard_beta2": 87.09, "hard_beta6": 83.09},
}


def check_table(table: str) -> None:
  if table not in TABLES:
    raise ValueError(f"table={table!r}: expected one of {list(TABLES)}.")


def run_config(table: str, cell: Cell, seed: int) -> tuple[str, list[str]]:
  """(--config value, the --config.* flags) of one run of ``table``.

  The config selects the dataset, the method and the evaluation protocol;
  the flags are what differs between the runs of a config: the seed and beta.
  """
  check_table(table)
  flags = [f"--config.seed={seed}"]
  if table == DEMO_TABLE:
    config = "configs/digits.py"
    method = registry.METHODS[cell.method]
    flags += [f"--config.loss.name={method.loss}", f"--config.loss.tau_plus={method.tau_plus}"]
  else:
    config = f"configs/paper.py:dataset={table},method={cell.method}"
  return config, flags + [f"--config.loss.beta={cell.beta}"]


# --------------------------------------------------------------------------
# Compute estimates (from FLOPs, not measurements).

# XLA cost analysis of hcl_jax.models' ResNet-50 (CIFAR stem, width 1) at
# 32x32: forward 2.47 GFLOP per image (1.24 G multiply-adds), forward +
# backward 7.45 GFLOP. The projection head and the loss add < 0.1 %.
FORWARD_FLOPS = 2.47e9
TRAIN_FLOPS_PER_VIEW = 7.45e9
# Dense peak FLOP/s of the compute path float32 takes by default.
ACCELERATORS = {
    "TPU v4-8": 4 * 275e12,       # 4 chips; f32 convs run as bf16 on the MXU
    "A100": 156e12,               # TF32 (JAX's default f32 precision on GPU)
    "H100 SXM": 495e12,           # TF32
}
UTILISATION = 0.30


@dataclasses.dataclass(frozen=True)
class Estimate:
  pretrain_flops: float
  readout_flops: float
  hours: dict[str, float]   # accelerator -> hours per run at UTILISATION

  @property
  def total_flops(self) -> float:
    return self.pretrain_flops + self.readout_flops


def estimate_run(dataset: str, *, epochs: int = 400, batch_size: int = 256,
                 linear_epochs: int = 100,
                 utilisation: float = UTILISATION) -> Estimate:
  """FLOPs and hours of one paper-config run (ResNet-50 at 32x32) on ``dataset``.

  Pre-training: epochs x (images // batch) x batch images x 2 views x
  TRAIN_FLOPS_PER_VIEW. Readout: linear_epochs x readout images x
  FORWARD_FLOPS (frozen encoder on augmented images). kNN monitoring is not
  counted (one pass over train + test per evaluation). The image counts are
  the registry's (``pretrain_examples``, ``train_examples``).
  """
  spec = registry.get(registry.DATASETS, dataset, "dataset")
  images_per_epoch = (spec.pretrain_examples // batch_size) * batch_size
  pretrain = epochs * images_per_epoch * 2 * TRAIN_FLOPS_PER_VIEW
  readout = linear_epochs * spec.train_examples * FORWARD_FLOPS
  hours = {name: (pretrain + readout) / (peak * utilisation) / 3600
           for name, peak in ACCELERATORS.items()}
  return Estimate(pretrain, readout, hours)
