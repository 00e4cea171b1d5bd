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

# One persistent XLA compilation cache per test session, shared by the xdist
# workers and every process a test starts (they inherit the environment): the
# end-to-end tests run `python -m hcl_jax.main` over and over with the same
# tiny model, and each run used to compile the same train step and readout
# again. The session's own folder (a clean run starts empty) is removed at
# its end. The programs are the same ones, so nothing a test checks changes;
# trace counts (chex.assert_max_traces, _cache_size) are in-memory and not
# affected.
_XLA_CACHE_CREATED = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _XLA_CACHE_CREATED:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hcl_jax_test_xla_cache_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _XLA_CACHE_CREATED:
    import shutil
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
