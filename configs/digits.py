"""The embedded default: HCL on the UCI digits that ship with scikit-learn.

Command (what `make train` runs):
  python -m hcl_jax.main --config configs/digits.py --workdir workdirs/digits

Expected time: 4 min on a 2-core AMD EPYC (AVX2, no accelerator) from a fresh
clone, venv creation included: 150 steps at ~290 img/s (2.5 min), then the
linear readout and kNN of the trained and of the randomly initialised encoder.
Reached 91.9% linear top-1 vs 76.4% at random initialisation (seed 0; `make train`, 2026-12-01).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "digits"            # a key of hcl_jax.config.registry.DATASETS: digits, cifar10, ...
  config.data_dir = ""                 # TFDS data_dir: local folder or gs:// bucket; "": TFDS's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets)
  config.image_size = 16               # 8x8 digits upsampled; the paper configs use 32
  config.batch_size = 256              # global, over all devices and hosts
  config.num_epochs = 30
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"       # resnet18 | resnet34 | resnet50
  config.model.stem = "cifar"          # cifar (3x3, stride 1, no pool) | imagenet
  config.model.width_multiplier = 0.25  # narrow net for the laptop-sized demo
  config.model.projection_hidden_dim = 512
  config.model.projection_dim = 128
  # Ghost BatchNorm: statistics over groups of this many images of one view
  # (the published 2-GPU DataParallel run: 128). 0: the whole per-view batch.
  config.model.bn_group_size = 0

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "hcl"             # nt_xent | dcl | hcl
  config.loss.temperature = 0.5
  config.loss.tau_plus = 0.1
  config.loss.beta = 1.0
  config.loss.beta_anneal = "none"     # none | down (linspace(beta, 0, 9) over the run)
  config.loss.block_size = 0           # 0: the default (256-row blocks); else anchors per block

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"       # adam | lars
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 1e-6
  config.optimizer.warmup_epochs = 0   # lars only: linear warmup, then cosine decay
  config.mixed_precision = False       # bf16 compute, float32 params and loss

  config.augment = ml_collections.ConfigDict()
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.crop_ratio = (3 / 4, 4 / 3)
  config.augment.flip_prob = 0.5
  config.augment.jitter_prob = 0.8
  config.augment.brightness = 0.4
  config.augment.contrast = 0.4
  config.augment.saturation = 0.4
  config.augment.hue = 0.1
  config.augment.grayscale_prob = 0.2
  # The published GaussianBlur (image/utils.py): p 0.5, sigma ~ U(0.1, 2.0),
  # kernel int(0.1 * image side). At 16 px that is int(1.6) = 1: a 1-tap
  # kernel, the identity, so digits runs are unblurred, as the formula gives.
  config.augment.blur_prob = 0.5
  config.augment.blur_sigma = (0.1, 2.0)
  config.augment.blur_kernel_size = 1

  # Host input pipeline (hcl_jax/data/pipeline.py).
  config.data = ml_collections.ConfigDict()
  config.data.shuffle_buffer = 50_000   # >= examples per host: a uniform shuffle
  config.data.num_parallel_calls = -1   # parallel augmentation calls; -1: tf.data autotune
  config.data.threadpool_size = 0       # tf.data private threadpool; 0: TF default (all cores)
  config.data.mean = (0.4914, 0.4822, 0.4465)  # CIFAR-10's, used for every dataset
  config.data.std = (0.2023, 0.1994, 0.2010)   # as in the published code (docs/reference.md)

  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 3
  config.log_every_steps = 10
  config.on_nonfinite = "stop"         # stop | skip: a non-finite loss/gradient ends the run, or drops that update
  # "N,M": a jax.profiler trace of steps N..M in WORKDIR/profile/ (hcl_jax/train/profiling.py); "": none.
  config.profile_steps = ""

  config.eval = ml_collections.ConfigDict()
  config.eval.knn_k = 200
  config.eval.knn_temperature = 0.5
  config.eval.linear_epochs = 100
  config.eval.linear_batch_size = 512
  config.eval.linear_learning_rate = 1e-3
  config.eval.linear_weight_decay = 1e-6
  # fast: cached unaugmented features, BN in inference mode (~100x cheaper).
  # augmented: features of augmented images every epoch, BN in inference mode.
  # published: image/linear.py: augmented images, the network in train mode
  #   (BN batch statistics, running averages keep moving), tested every 5 epochs.
  config.eval.readout = "fast"
  # Side of the kNN bank / kNN test / linear test images; 0: config.image_size.
  # The published test_transform has no resize (STL-10: 96).
  config.eval.image_size = 0
  return config
