"""TensorFlow for the host input pipeline only: CPU, quiet.

Import ``tf`` from here, not ``tensorflow`` directly, so that TF's C++ log
noise is off before TF loads and TF never claims an accelerator that JAX
needs (tensorflow-cpu has none, but a full tensorflow install would).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # errors only

import tensorflow as tf  # noqa: E402

try:
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU")
except (RuntimeError, ValueError):
  pass  # devices already initialised, or no such device type: nothing to hide
tf.get_logger().setLevel("ERROR")

__all__ = ["tf"]
