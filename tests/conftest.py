"""Test-wide set-up: 8 simulated CPU devices for the multi-device tests.

XLA reads the flag once, when the backend starts, so it is set here, before
any test module imports jax. Single-device tests are unaffected: unsharded
arrays live on device 0.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The digits dataset the tests build goes where it always went (the repository's
# gitignored data/), not into TFDS's default ~/tensorflow_datasets.
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data"))
