"""CIFAR-100, Debiased (loss.name=dcl, tau+ 0.1, beta 0): the published settings.

ResNet-50 (CIFAR stem, width 1), 32x32 training crops with the published 3x3
Gaussian blur, batch 256, 400 epochs, t = 0.5, Adam lr 1e-3, weight decay 1e-6,
ghost BatchNorm over 128 images per view; evaluation at 32x32; the published
linear readout (100 epochs at batch 512 on augmented images, network in train mode)
(configs/common.py, docs/reference.md). Pre-trains on 50,000 train images (49,920 used: 195 steps of 256).

Command:
  python -m hcl_jax.main --config configs/cifar100_dcl.py --workdir workdirs/cifar100_dcl \
      --config.data_dir=/path/to/tensorflow_datasets

Expected time: ESTIMATES FROM FLOPs, NOT MEASUREMENTS. 310 PFLOP per run
(298 pre-training: 400 epochs x images x 2 views x 7.45 GFLOP
forward+backward per view; 12.3 readout: 100 epochs x forward 2.47 GFLOP;
counts from XLA's cost analysis of the model at 32x32). At an assumed 30 % of peak:
  TPU v4-8 (4 chips x 275 TFLOP/s bf16):      ~0.26 h
  one A100 (156 TFLOP/s TF32, float32 default): ~1.8 h  (about half with --config.mixed_precision=True)
  one H100 SXM (495 TFLOP/s TF32):            ~0.6 h
Small per-chip batches and the host input pipeline can make it slower; see
docs/reproducing.md.
"""

import importlib.util
import pathlib


def _load_common():
  """configs/common.py, by path: configs is not a package."""
  path = pathlib.Path(__file__).resolve().with_name("common.py")
  spec = importlib.util.spec_from_file_location("hcl_jax_configs_common", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  return _load_common().paper_config("cifar100", "dcl")
