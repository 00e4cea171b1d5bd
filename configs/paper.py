"""The paper's image experiments: the published settings for one dataset and method.

Selected by argument (ml_collections passes the text after the colon to
``get_config``): ``--config configs/paper.py:dataset=DATASET,method=METHOD``,
DATASET one of ``hcl_jax.config.registry.DATASETS``, METHOD one of
``hcl_jax.config.registry.METHODS`` (simclr: loss.name=nt_xent, tau+ 0, beta 0;
dcl: loss.name=dcl, tau+ 0.1, beta 0; hcl: loss.name=hcl, tau+ 0.1, beta 1).

The published settings (docs/reference.md): ResNet-50 (CIFAR stem, width 1),
32x32 training crops for every dataset with the published 3x3 Gaussian blur,
batch 256, 400 epochs, t = 0.5, Adam lr 1e-3, weight decay 1e-6, ghost
BatchNorm over 128 images of one view (the published 2-GPU DataParallel run);
evaluation at the dataset's own size (CIFAR: 32x32, STL-10: 96x96); the
published linear readout (100 epochs at batch 512 on augmented images, network
in train mode). CIFAR pre-trains on 50,000 train images (49,920 used: 195 steps
of 256), STL-10 on 105,000 train+unlabelled images (104,960 used: 410 steps).
Every key starts from ``configs/base.py`` (the schema, whose defaults are the
published settings of the keys every run has had); this file sets the
dataset, the method's loss and what the published protocol adds to the base.

Commands, one per experiment:
  python -m hcl_jax.main --config configs/paper.py:dataset=cifar10,method=simclr --workdir workdirs/cifar10_simclr --config.data_dir=/path/to/tensorflow_datasets
  python -m hcl_jax.main --config configs/paper.py:dataset=cifar10,method=dcl --workdir workdirs/cifar10_dcl --config.data_dir=/path/to/tensorflow_datasets
  python -m hcl_jax.main --config configs/paper.py:dataset=cifar10,method=hcl --workdir workdirs/cifar10_hcl --config.data_dir=/path/to/tensorflow_datasets
  python -m hcl_jax.main --config configs/paper.py:dataset=cifar100,method=simclr --workdir workdirs/cifar100_simclr --config.data_dir=/path/to/tensorflow_datasets
  python -m hcl_jax.main --config configs/paper.py:dataset=cifar100,method=dcl --workdir workdirs/cifar100_dcl --config.data_dir=/path/to/tensorflow_datasets
  python -m hcl_jax.main --config configs/paper.py:dataset=cifar100,method=hcl --workdir workdirs/cifar100_hcl --config.data_dir=/path/to/tensorflow_datasets
  python -m hcl_jax.main --config configs/paper.py:dataset=stl10,method=simclr --workdir workdirs/stl10_simclr --config.data_dir=/path/to/tensorflow_datasets
  python -m hcl_jax.main --config configs/paper.py:dataset=stl10,method=dcl --workdir workdirs/stl10_dcl --config.data_dir=/path/to/tensorflow_datasets
  python -m hcl_jax.main --config configs/paper.py:dataset=stl10,method=hcl --workdir workdirs/stl10_hcl --config.data_dir=/path/to/tensorflow_datasets

Expected time: ESTIMATES FROM FLOPs, NOT MEASUREMENTS (the same for the three
methods; ``hcl_jax.reproduce.tables.estimate_run`` computes them, docs/reproducing.md
shows the arithmetic). Pre-training: 400 epochs x images x 2 views x 7.45 GFLOP
forward+backward per view; readout: 100 epochs x forward 2.47 GFLOP; counts
from XLA's cost analysis of the model at 32x32. At an assumed 30 % of peak:

  per run                                       CIFAR-10 / CIFAR-100   STL-10
  FLOPs (pre-training + readout)                310 PFLOP (298 + 12.3)  627 PFLOP (626 + 1.2)
  TPU v4-8 (4 chips x 275 TFLOP/s bf16)         ~0.26 h                 ~0.53 h
  one A100 (156 TFLOP/s TF32, float32 default)  ~1.8 h                  ~3.7 h
  one H100 SXM (495 TFLOP/s TF32)               ~0.6 h                  ~1.2 h

(on an A100 about half with --config.mixed_precision=True). Small per-chip
batches and the host input pipeline can make it slower; see docs/reproducing.md.
"""

import ml_collections

from hcl_jax.config import check as config_check
from hcl_jax.config import registry


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The published settings for ``arg`` = ``"dataset=DATASET,method=METHOD"``."""
  chosen = registry.parse_config_arg(
      "configs/paper.py", arg, {"dataset": registry.DATASETS, "method": registry.METHODS})
  dataset = registry.DATASETS[chosen["dataset"]]
  method = registry.METHODS[chosen["method"]]
  # Base's defaults are the published ResNet-50 (CIFAR stem, width 1), 32x32
  # crops for every dataset, batch 256, 400 epochs, t = 0.5, Adam lr 1e-3,
  # weight decay 1e-6, float32, and the readout's kNN (k 200, t 0.5) and
  # optimisation (100 epochs at batch 512, Adam lr 1e-3, weight decay 1e-6).
  config = config_check.base_config()
  config.dataset = chosen["dataset"]
  config.model.bn_group_size = 128     # 2 GPUs x 128 images per view, as published

  config.loss.name = method.loss
  config.loss.tau_plus = method.tau_plus
  config.loss.beta = method.beta

  config.augment.blur_kernel_size = 3  # int(0.1 * 32), image/utils.py

  # A uniform shuffle needs a buffer of every example of the host. STL-10's
  # 105k images are 96x96 when shuffled (resized later): about 2.9 GB.
  config.data.shuffle_buffer = dataset.pretrain_examples

  # 195 (CIFAR) / 410 (STL-10) steps per epoch; SIGTERM also checkpoints.
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 50

  config.eval.readout = "published"    # image/linear.py; "fast" for monitoring
  config.eval.image_size = dataset.image_size   # test_transform: no resize
  return config
