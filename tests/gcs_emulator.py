"""pytest fixtures: a real GCS API emulator (fake-gcs-server) on 127.0.0.1.

``gcs`` (session scope) starts ``hcl_jax.testing.gcs_emulator.GcsEmulator`` on a free
loopback port with one bucket, ``BUCKET``, and stops it after the session.
``gcs_env`` (module scope) also points this process's epath, gcsfs and
TensorStore at it (the variables of ``GcsEmulator.env()``), for in-process
tests; subprocesses get ``gcs.env()`` in their environment.

Use from a test module with ``from gcs_emulator import gcs, gcs_env  # noqa: F401``.
"""

import pytest

from hcl_jax.testing.gcs_emulator import GcsEmulator

BUCKET = "rehearsal"


@pytest.fixture(scope="session")
def gcs():
  with GcsEmulator() as emulator:
    emulator.create_bucket(BUCKET)
    yield emulator


@pytest.fixture(scope="module")
def gcs_env(gcs):
  # epath decides once per process whether gs:// goes through TensorFlow
  # (functools.cache on EPATH_USE_TF): forget that decision while the emulator's
  # variables are set, and again after, so neither this module nor the next
  # one in the same worker keeps the other's backend.
  from etils.epath import gpath
  with pytest.MonkeyPatch.context() as patch:
    for name, value in gcs.env().items():
      patch.setenv(name, value)
    gpath._is_tf_installed.cache_clear()
    yield gcs
  gpath._is_tf_installed.cache_clear()
