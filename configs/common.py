"""Settings shared by the paper-reproduction configs (not a config itself).

``configs/digits.py`` stays the schema: ``base_config()`` is its config, so a
key added there reaches every config. ``paper_config(dataset, method)`` sets
the published image-experiment settings on top (docs/reference.md): ResNet-50 with
a CIFAR stem at width 1, batch 256, 400 epochs, t = 0.5, Adam lr 1e-3 and
weight decay 1e-6, 32x32 training crops for every dataset with the published
Gaussian blur (3x3 kernel), evaluation at the dataset's own size (STL-10:
96x96), ghost BatchNorm over 128 images of one view (the published 2-GPU
DataParallel run), the published linear readout (``eval.readout =
"published"``: 100 epochs at batch 512 on augmented images, network in train
mode); tau+ and beta per method (``METHODS``).

Config files load this module by its path (``load_common()`` below, copied
into each), so they need neither ``configs`` to be a package nor the
repository root on ``sys.path``.

Expected times in the config docstrings are estimates from FLOPs, not
measurements; ``hcl_jax.reproduce.estimate_run`` computes them and
docs/reproducing.md shows the arithmetic.
"""

import importlib.util
import pathlib

import ml_collections

# method -> (loss.name, loss.tau_plus, loss.beta). beta = 0 for the two
# baselines: HCL with beta = 0 is DCL, and with tau+ = 0 too it is SimCLR.
METHODS = {
    "simclr": ("nt_xent", 0.0, 0.0),
    "dcl": ("dcl", 0.1, 0.0),
    "hcl": ("hcl", 0.1, 1.0),
}

# Pre-training examples of each dataset (STL-10: train + unlabelled).
PRETRAIN_EXAMPLES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 105_000}
# Evaluation image side: each dataset's own (the published test_transform).
EVAL_IMAGE_SIZES = {"cifar10": 32, "cifar100": 32, "stl10": 96}


def _load_module(name: str):
  path = pathlib.Path(__file__).resolve().with_name(f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"hcl_jax_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_config() -> ml_collections.ConfigDict:
  """Every key of the schema (configs/digits.py), with its values."""
  return _load_module("digits").get_config()


def paper_config(dataset: str, method: str) -> ml_collections.ConfigDict:
  """The published settings for ``dataset`` pre-trained with ``method``.

  Args:
    dataset: cifar10 | cifar100 | stl10.
    method: simclr | dcl | hcl (see ``METHODS``).
  """
  if dataset not in PRETRAIN_EXAMPLES:
    raise ValueError(f"dataset={dataset!r}: expected one of {sorted(PRETRAIN_EXAMPLES)}.")
  if method not in METHODS:
    raise ValueError(f"method={method!r}: expected one of {sorted(METHODS)}.")
  config = base_config()
  config.dataset = dataset
  config.image_size = 32                # STL-10 too, as in the published code
  config.batch_size = 256
  config.num_epochs = 400
  config.seed = 0

  config.model.name = "resnet50"
  config.model.stem = "cifar"
  config.model.width_multiplier = 1.0
  config.model.projection_hidden_dim = 512
  config.model.projection_dim = 128
  config.model.bn_group_size = 128     # 2 GPUs x 128 images per view, as published

  name, tau_plus, beta = METHODS[method]
  config.loss.name = name
  config.loss.temperature = 0.5
  config.loss.tau_plus = tau_plus
  config.loss.beta = beta
  config.loss.beta_anneal = "none"

  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 1e-6
  config.optimizer.warmup_epochs = 0
  config.mixed_precision = False       # float32, as published; bf16 is a flag away

  config.augment.blur_kernel_size = 3  # int(0.1 * 32), image/utils.py

  # A uniform shuffle needs a buffer of every example of the host. STL-10's
  # 105k images are 96x96 when shuffled (resized later): about 2.9 GB.
  config.data.shuffle_buffer = PRETRAIN_EXAMPLES[dataset]

  # 195 (CIFAR) / 410 (STL-10) steps per epoch; SIGTERM also checkpoints.
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 50

  config.eval.knn_k = 200
  config.eval.knn_temperature = 0.5
  config.eval.linear_epochs = 100
  config.eval.linear_batch_size = 512
  config.eval.linear_learning_rate = 1e-3
  config.eval.linear_weight_decay = 1e-6
  config.eval.readout = "published"    # image/linear.py; "fast" for monitoring
  config.eval.image_size = EVAL_IMAGE_SIZES[dataset]   # test_transform: no resize
  return config
