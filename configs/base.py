"""Every key of a run's config, with its default: the schemas of image runs
(``get_config``) and graph runs (``graph_config``).

``configs/digits.py`` and ``configs/paper.py`` start from ``get_config()``
here and override only what differs; a key that is not here is refused
(``hcl_jax.config.check``: "unknown key"), and a key that a config does not
set has the value here, never another config's.

The defaults: the published settings (HCL's image/main.py, docs/reference.md)
for the keys every run has had. A key added since has the value that does
what runs did before it existed, because an older run's config.json that
lacks it is completed from here (``config_check.validate``): no ghost
BatchNorm, no blur, the fast readout, evaluation at the training size
(configs/paper.py sets the published ones).

Each key's comment: what it is; after ``|`` or in words, the values allowed
(``config_check`` checks each one).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "cifar10"           # a key of hcl_jax.config.registry.DATASETS: digits | cifar10 | cifar100 | stl10
  config.data_dir = ""                 # TFDS data_dir: local folder or gs:// bucket; "": TFDS's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets)
  config.image_size = 32               # side of the training crops, every dataset (STL-10 too, as published); int >= 1
  config.batch_size = 256              # global, over all devices and hosts; int >= 2, a multiple of the device count
  config.num_epochs = 400              # pre-training epochs; int >= 1
  config.seed = 0                      # initialisation, data order and augmentation; int >= 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet50"       # encoder: resnet18 | resnet34 | resnet50
  config.model.stem = "cifar"          # cifar (3x3, stride 1, no pool) | imagenet (7x7, stride 2, max pool)
  config.model.width_multiplier = 1.0  # channels x this (64 * it >= 0.5); > 0
  config.model.projection_hidden_dim = 512  # projection head's hidden layer; int >= 1
  config.model.projection_dim = 128    # projection head's output (the loss's features); int >= 1
  # Ghost BatchNorm: statistics over groups of this many images of one view
  # (the published 2-GPU DataParallel run: 128, configs/paper.py). 0: the
  # whole per-view batch; else an int >= 2 dividing batch_size.
  config.model.bn_group_size = 0

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "hcl"             # nt_xent (SimCLR) | dcl | hcl
  config.loss.temperature = 0.5        # t of the softmax; > 0
  config.loss.tau_plus = 0.1           # class prior tau+ (dcl, hcl); in [0, 1)
  config.loss.beta = 1.0               # hardness concentration (hcl; 0: dcl); >= 0
  config.loss.beta_anneal = "none"     # none | down (linspace(beta, 0, 9) over the run)
  config.loss.block_size = 0           # anchors per block of the loss; 0: the default (256-row blocks)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"       # adam | lars
  config.optimizer.learning_rate = 1e-3  # peak learning rate; > 0
  config.optimizer.weight_decay = 1e-6   # >= 0
  config.optimizer.warmup_epochs = 0   # lars only: linear warmup, then cosine decay; >= 0, <= num_epochs
  config.mixed_precision = False       # True: bf16 compute, float32 params and loss; False: float32

  # The augmentation, as torchvision's transforms in the published code.
  config.augment = ml_collections.ConfigDict()
  config.augment.crop_scale = (0.08, 1.0)    # RandomResizedCrop area fractions (low, high); 0 < low <= high <= 1
  config.augment.crop_ratio = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratios (low, high); 0 < low <= high
  config.augment.flip_prob = 0.5       # horizontal flip probability; in [0, 1]
  config.augment.jitter_prob = 0.8     # colour jitter probability; in [0, 1]
  config.augment.brightness = 0.4      # jitter factor in [1-x, 1+x]; >= 0
  config.augment.contrast = 0.4        # jitter factor in [1-x, 1+x]; >= 0
  config.augment.saturation = 0.4      # jitter factor in [1-x, 1+x]; >= 0
  config.augment.hue = 0.1             # hue shift in [-x, x]; in [0, 0.5]
  config.augment.grayscale_prob = 0.2  # grayscale probability; in [0, 1]
  # The published GaussianBlur (image/utils.py): p 0.5, sigma ~ U(0.1, 2.0),
  # kernel int(0.1 * image side), 3 at 32 px (configs/paper.py).
  config.augment.blur_prob = 0.5       # blur probability; in [0, 1]
  config.augment.blur_sigma = (0.1, 2.0)  # sigma ~ U(low, high); 0 < low <= high
  config.augment.blur_kernel_size = 1  # kernel side, odd int >= 1; 1: a 1-tap kernel, no blur

  # Host input pipeline (hcl_jax/data/pipeline.py).
  config.data = ml_collections.ConfigDict()
  config.data.shuffle_buffer = 50_000   # examples; >= examples per host is a uniform shuffle; int >= 1
  config.data.num_parallel_calls = -1   # parallel augmentation calls; -1: tf.data autotune, else int >= 1
  config.data.threadpool_size = 0       # tf.data private threadpool; 0: TF default (all cores), else int >= 1
  config.data.mean = (0.4914, 0.4822, 0.4465)  # per RGB channel; CIFAR-10's, used for every dataset
  config.data.std = (0.2023, 0.1994, 0.2010)   # per RGB channel, each > 0; as in the published code (docs/reference.md)

  config.checkpoint_every_steps = 200  # also on SIGTERM and at the end; int >= 1
  config.keep_checkpoints = 3          # newest checkpoints kept; int >= 1
  config.log_every_steps = 10          # metrics.jsonl and TensorBoard; int >= 1
  config.on_nonfinite = "stop"         # stop | skip: a non-finite loss/gradient ends the run, or drops that update
  # "N,M": a jax.profiler trace of steps N..M in WORKDIR/profile/ (hcl_jax/train/profiling.py); "": none.
  config.profile_steps = ""

  config.eval = ml_collections.ConfigDict()
  config.eval.knn_k = 200              # kNN neighbours; int >= 1
  config.eval.knn_temperature = 0.5    # kNN weighting temperature; > 0
  config.eval.linear_epochs = 100      # linear readout epochs; int >= 1
  config.eval.linear_batch_size = 512  # int >= 1
  config.eval.linear_learning_rate = 1e-3  # Adam; > 0
  config.eval.linear_weight_decay = 1e-6   # >= 0
  # fast: cached unaugmented features, BN in inference mode (~100x cheaper).
  # augmented: features of augmented images every epoch, BN in inference mode.
  # published: image/linear.py: augmented images, the network in train mode
  #   (BN batch statistics, running averages keep moving), tested every 5 epochs.
  config.eval.readout = "fast"
  # Side of the kNN bank / kNN test / linear test images; 0: config.image_size,
  # else int >= 1. The published test_transform has no resize (STL-10: 96).
  config.eval.image_size = 0
  return config


def graph_config() -> ml_collections.ConfigDict:
  """Every key of a graph (InfoGraph) run, with the published settings
  (HCL graph/launch.sh, deepinfomax.py); ``configs/graph.py:dataset=NAME``
  (``hcl_jax.graph.config.base_config``) sets the dataset. Checked by
  ``hcl_jax.graph.train.validate_config``."""
  config = ml_collections.ConfigDict()
  config.dataset = "MUTAG"          # one of hcl_jax.graph.config.DATASETS
  config.data_dir = ""              # "": MUTAG from the grakel wheel; else a folder of TU files
  config.batch_size = 128           # graphs per batch; int >= 2
  config.num_epochs = 200           # int >= 1
  config.learning_rate = 1e-3       # Adam, no weight decay; > 0
  config.seed = 0                   # data order, initialisation and SVC folds; int >= 0
  config.hidden_dim = 32            # GIN width; int >= 1
  config.num_layers = 3             # launch.sh --num-gc-layers 3; int >= 1
  config.loss = ml_collections.ConfigDict()
  config.loss.measure = "jsd_hard"  # jsd_hard | jsd (plain InfoGraph)
  config.loss.beta = 1.0            # hardness; >= 0 (0: the debiased loss)
  config.loss.tau_plus = 0.5        # class prior; in [0, 1); the published default, never overridden
  config.loss.mask_mode = "zero"    # zero (published) | remove
  config.eval_every_epochs = 100    # SVC at epoch 0, every N epochs and at the end; int >= 1
  config.svc_folds = 10             # published: 10-fold stratified CV ...
  config.svc_inner_folds = 5        # ... and C chosen by 5-fold grid search inside
  config.checkpoint_every_epochs = 50  # int >= 1
  config.keep_checkpoints = 2       # int >= 1
  config.tensorboard = True         # TensorBoard scalars in the workdir
  config.progress = "auto"          # auto | bar | lines | none
  return config
