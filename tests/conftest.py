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
