"""The multi-process runtime: argument resolution, and two real processes.

The two-process test starts two Python processes on this machine (CPU
backend, 2 devices each, coordinator on 127.0.0.1), each initialising through
``initialize_distributed()`` and running a psum and the HCL loss over the
4-device global mesh, and checks both against values computed here.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import json  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import distributed_worker  # noqa: E402  (tests/ is on sys.path under pytest)
import support  # noqa: E402
from hcl_jax import distributed  # noqa: E402
from hcl_jax.distributed import cluster  # noqa: E402
from hcl_jax import losses  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(distributed_worker.__file__).resolve()
_ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
             "JAX_LOCAL_DEVICE_IDS", "JAX_COORDINATOR_PORT",
             "HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S")
# What GKE and SLURM set: removed for the tests here, whatever this machine has.
_CLUSTER_PREFIXES = ("TPU_", "MEGASCALE_", "SLURM_")
# Generous: two cold JAX imports and compiles on a loaded 2-core machine.
_PROCESS_TIMEOUT_S = 180


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _hcl_loss_numpy(z1: np.ndarray, z2: np.ndarray, *, temperature: float,
                    tau_plus: float, beta: float) -> float:
  """The reference formula (docs/reference.md), float64, written independently."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  b = z1.shape[0]
  n = 2 * b - 2
  s = z @ z.T / temperature
  total = 0.0
  for i in range(2 * b):
    p = (i + b) % (2 * b)
    neg = np.array([j for j in range(2 * b) if j not in (i, p)])
    pos = np.exp(s[i, p])
    w = np.exp(beta * s[i, neg])
    r = n * np.sum(w * np.exp(s[i, neg])) / np.sum(w)
    ng = max((r - tau_plus * n * pos) / (1 - tau_plus),
             n * np.exp(-1 / temperature))
    total += -np.log(pos / (pos + ng))
  return total / (2 * b)


@pytest.fixture
def clean_env(monkeypatch):
  for name in _ENV_VARS:
    monkeypatch.delenv(name, raising=False)
  for name in list(os.environ):
    if name.startswith(_CLUSTER_PREFIXES):
      monkeypatch.delenv(name)
  return monkeypatch


@pytest.fixture
def fake_initialize(clean_env):
  """Records jax.distributed.initialize calls instead of starting a runtime."""
  calls = []
  clean_env.setattr(jax.distributed, "initialize",
                    lambda **kwargs: calls.append(kwargs))
  clean_env.setattr(distributed, "is_cloud_tpu_vm", lambda: False)
  return calls


def test_single_process_does_nothing(fake_initialize):
  info = distributed.initialize_distributed()
  assert fake_initialize == []
  assert info.mode == "single"
  assert (info.process_index, info.process_count) == (0, 1)
  assert info.global_device_count == len(jax.devices())


def _setenv(monkeypatch, **values):
  # Through monkeypatch, so nothing leaks into later tests' subprocesses.
  for name, value in values.items():
    monkeypatch.setenv(name, value)


def test_env_vars_reach_initialize(fake_initialize, monkeypatch):
  _setenv(monkeypatch, JAX_COORDINATOR_ADDRESS="127.0.0.1:1234",
          JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3", JAX_LOCAL_DEVICE_IDS="0,1")
  info = distributed.initialize_distributed(initialization_timeout_s=7)
  assert info.mode == "explicit"
  assert fake_initialize == [dict(coordinator_address="127.0.0.1:1234",
                                  num_processes=4, process_id=3,
                                  local_device_ids=[0, 1],
                                  # JAX's deadline: a minute after the watchdog's
                                  # one-line error at 7 s (a test below).
                                  initialization_timeout=7 + 60)]


def test_keyword_arguments_override_env_vars(fake_initialize, monkeypatch):
  _setenv(monkeypatch, JAX_COORDINATOR_ADDRESS="127.0.0.1:1234",
          JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3")
  distributed.initialize_distributed(coordinator_address="host-a:99",
                                     num_processes=2, process_id=0)
  (call,) = fake_initialize
  assert (call["coordinator_address"], call["num_processes"],
          call["process_id"], call["local_device_ids"]) == ("host-a:99", 2, 0,
                                                            None)


def test_tpu_pod_slice_initialises_without_arguments(fake_initialize,
                                                     monkeypatch):
  monkeypatch.setattr(cluster, "is_cloud_tpu_vm", lambda: True)
  monkeypatch.setattr(cluster, "cloud_tpu_worker_count", lambda: 4)
  assert distributed.initialize_distributed().mode == "tpu"
  assert fake_initialize == [dict(initialization_timeout=120 + 60)]


def test_tpu_with_unreadable_metadata_assumes_a_pod_slice(fake_initialize,
                                                          monkeypatch):
  monkeypatch.setattr(cluster, "is_cloud_tpu_vm", lambda: True)
  monkeypatch.setattr(cluster, "cloud_tpu_worker_count", lambda: None)
  assert distributed.initialize_distributed().mode == "tpu"
  assert len(fake_initialize) == 1


def test_single_host_tpu_vm_does_nothing(fake_initialize, monkeypatch):
  monkeypatch.setattr(cluster, "is_cloud_tpu_vm", lambda: True)
  monkeypatch.setattr(cluster, "cloud_tpu_worker_count", lambda: 1)
  assert distributed.initialize_distributed().mode == "single"
  assert fake_initialize == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="127.0.0.1:1234"), "num_processes, process_id"),
    (dict(num_processes=2, process_id=0), "coordinator_address"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0),
     "host:port"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2),
     r"process_id=2 must be in \[0, num_processes=2\)"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0),
     "num_processes=0"),
])
def test_bad_cluster_specs_are_rejected(fake_initialize, kwargs, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize_distributed(**kwargs)
  assert fake_initialize == []


def test_bad_env_var_is_rejected(fake_initialize, monkeypatch):
  _setenv(monkeypatch, JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="two",
          JAX_PROCESS_ID="0")
  with pytest.raises(ValueError, match="num_processes='two'"):
    distributed.initialize_distributed()


# --- detect_cluster: each environment, as its scheduler sets it -------------

def _detect(env, *, tpu_vm=False, workers=None, **kwargs):
  return distributed.detect_cluster(env, on_cloud_tpu_vm=lambda: tpu_vm,
                                    tpu_worker_count=lambda: workers, **kwargs)


# A v5p-32 JobSet pod (4 workers), as GKE injects it (cloud.google.com/kubernetes-engine/docs/how-to/tpus).
_GKE = {"TPU_WORKER_HOSTNAMES": "js-slice-0-0.js,js-slice-0-1.js,js-slice-0-2.js,js-slice-0-3.js",
        "TPU_WORKER_ID": "2", "TPU_ACCELERATOR_TYPE": "v5p-32"}
# Task 3 of `srun` over 4 nodes, one task each, in job 123456.
_SLURM = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
          "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "gpu[017-020]",
          "SLURM_STEP_TASKS_PER_NODE": "1(x4)"}


def test_gke_tpu_worker_list_and_id():
  spec = _detect(_GKE)
  # Worker 0 is the coordinator, on JAX's TPU coordinator port 8482.
  assert (spec.mode, spec.coordinator_address, spec.num_processes, spec.process_id,
          spec.local_device_ids) == ("gke-tpu", "js-slice-0-0.js:8482", 4, 2, None)


def test_gke_multislice_and_process_addresses():
  # Slice 1 of 2, 2 workers each: process 1 + 1 * 2 = 3 of 4; the megascale
  # coordinator (host only) wins over worker 0; TPU_PROCESS_ADDRESSES over hostnames.
  spec = _detect({"TPU_PROCESS_ADDRESSES": "10.0.0.5:8476,10.0.0.6:8476",
                  "TPU_WORKER_HOSTNAMES": "a,b,c", "TPU_WORKER_ID": "1",
                  "MEGASCALE_NUM_SLICES": "2", "MEGASCALE_SLICE_ID": "1",
                  "MEGASCALE_COORDINATOR_ADDRESS": "js-slice-0-0.js:8080",
                  "JAX_COORDINATOR_PORT": "9999"})
  assert (spec.coordinator_address, spec.num_processes, spec.process_id) == (
      "js-slice-0-0.js:9999", 4, 3)


def test_gke_single_host_slice_is_one_process():
  assert _detect({"TPU_WORKER_HOSTNAMES": "only-host", "TPU_WORKER_ID": "0"}).mode == "single"


@pytest.mark.parametrize("env, message", [
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, "TPU_WORKER_ID is not"),
    ({"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "2"}, "TPU_WORKER_ID=2 .of 2 workers"),
    ({"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "x"}, "TPU_WORKER_ID='x'"),
    ({**_SLURM, "SLURM_PROCID": "4"}, r"SLURM_PROCID=4 must be in \[0, SLURM_NTASKS=4\)"),
    ({k: v for k, v in _SLURM.items() if k != "SLURM_STEP_NODELIST"},
     "SLURM_STEP_NODELIST unset: this is the batch script"),
    ({**_GKE, "JAX_COORDINATOR_PORT": "70000"}, "JAX_COORDINATOR_PORT=70000"),
])
def test_inconsistent_cluster_variables_are_one_line_errors(env, message):
  with pytest.raises(ValueError, match=message) as failed:
    _detect(env)
  assert "\n" not in str(failed.value)


def test_slurm_tasks():
  spec = _detect(_SLURM)
  # JAX's SLURM port: 123456 % 4096 + 61440 = 576 + 61440.
  assert (spec.mode, spec.coordinator_address, spec.num_processes, spec.process_id,
          spec.local_device_ids) == ("slurm", "gpu017:62016", 4, 3, None)
  # Two tasks per node share its GPUs: each takes the one of its local rank.
  two_per_node = _detect({**_SLURM, "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_LOCALID": "1"})
  assert two_per_node.local_device_ids == [1]


@pytest.mark.parametrize("node_list, first", [
    ("n1", "n1"), ("n1,n2", "n1"), ("n[001-004],m1", "n001"),
    ("n[001,007-015]", "n001"), ("gpu[7]", "gpu7"), ("a-b[10-11]", "a-b10"),
])
def test_first_slurm_host(node_list, first):
  assert distributed.first_slurm_host(node_list) == first


def test_slurm_one_task_is_a_single_process():
  assert _detect({**_SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).mode == "single"


def test_order_explicit_then_gke_then_slurm_then_tpu_vm_then_single():
  explicit = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2",
              "JAX_PROCESS_ID": "1"}
  assert _detect({**explicit, **_GKE, **_SLURM}, tpu_vm=True, workers=4).mode == "explicit"
  assert _detect({**_GKE, **_SLURM}, tpu_vm=True, workers=4).mode == "gke-tpu"
  assert _detect(_SLURM, tpu_vm=True, workers=4).mode == "slurm"
  tpu = _detect({}, tpu_vm=True, workers=4)
  assert (tpu.mode, tpu.coordinator_address) == ("tpu", None)
  assert _detect({}, tpu_vm=True, workers=None).mode == "tpu"   # unreadable metadata
  assert _detect({}, tpu_vm=True, workers=1).mode == "single"
  assert _detect({}).mode == "single"
  # Keyword arguments over the environment.
  assert _detect(_GKE, coordinator_address="k:1", num_processes=2,
                 process_id=0).coordinator_address == "k:1"


def test_gke_and_slurm_reach_initialize(fake_initialize, monkeypatch):
  _setenv(monkeypatch, **_GKE)
  assert distributed.initialize_distributed(initialization_timeout_s=5).mode == "gke-tpu"
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  _setenv(monkeypatch, **_SLURM, HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S="9")
  assert distributed.initialize_distributed().mode == "slurm"
  assert fake_initialize == [
      dict(coordinator_address="js-slice-0-0.js:8482", num_processes=4, process_id=2,
           local_device_ids=None, initialization_timeout=5 + 60),
      dict(coordinator_address="gpu017:62016", num_processes=4, process_id=3,
           local_device_ids=None, initialization_timeout=9 + 60)]


def test_bad_timeout_env_is_rejected(fake_initialize, monkeypatch):
  _setenv(monkeypatch, HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S="soon")
  with pytest.raises(ValueError, match="HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S='soon'"):
    distributed.initialize_distributed()


@pytest.mark.xdist_group("subprocess")
def test_a_missing_process_ends_in_one_line_within_the_timeout(tmp_path):
  """Process 0 of 2 alone, timeout 3 s: one line naming the coordinator, the
  count and the timeout, exit 1, within the bound, no JAX fatal log."""
  port = _free_port()
  env = {k: v for k, v in os.environ.items()
         if k not in _ENV_VARS and not k.startswith(_CLUSTER_PREFIXES)}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT),
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
             JAX_PROCESS_ID="0", HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S="3")
  started = time.monotonic()
  proc = subprocess.run(
      [sys.executable, "-c", "from hcl_jax import distributed\n"
       "distributed.initialize_distributed()\nprint('joined?')"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  took = time.monotonic() - started
  assert proc.returncode == 1, proc.stdout + proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == [
      f"error: DistributedInitError: process 0 of 2, coordinator 127.0.0.1:{port} (explicit: "
      "--coordinator_address/--num_processes/--process_id or JAX_* variables): not all 2 "
      "processes joined within 3 s. A host did not start this run or exited first (see its "
      "log; e.g. a stale process held its TPU). --distributed_init_timeout_s (env "
      "HCL_JAX_DISTRIBUTED_INIT_TIMEOUT_S) sets the wait."], proc.stderr
  assert "DEADLINE_EXCEEDED" not in proc.stderr and "joined?" not in proc.stdout
  assert took < 3 + 60, took   # JAX's imports, then 3 s; not JAX's deadline of 63 s

def _run_processes(num_processes: int, devices_per_process: int
                   ) -> list[dict]:
  """Runs the worker in num_processes processes; returns their RESULT dicts."""
  port = _free_port()
  out_dir = tempfile.mkdtemp()
  env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
  env.update(
      WORKER_OUT_DIR=out_dir,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=("--xla_force_host_platform_device_count="
                 f"{devices_per_process}"),
      # This worktree's hcl_jax, ahead of any installed copy.
      PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      JAX_NUM_PROCESSES=str(num_processes),
  )
  procs = [
      subprocess.Popen([sys.executable, str(WORKER)], cwd=REPO_ROOT,
                       env={**env, "JAX_PROCESS_ID": str(i)},
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
      for i in range(num_processes)
  ]
  outputs = support.collect_processes(procs, timeout_s=_PROCESS_TIMEOUT_S)
  results = []
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    lines = [l for l in out.splitlines() if l.startswith("RESULT:")]
    if proc.returncode != 0 or len(lines) != 1:
      pytest.fail(f"process {i} exited {proc.returncode}; output:\n{out}")
    results.append(json.loads(lines[0][len("RESULT:"):]))
    with np.load(os.path.join(out_dir, f"params_{i}.npz")) as params:
      results[-1]["params"] = [params[f"arr_{k}"] for k in range(len(params.files))]
  shutil.rmtree(out_dir)
  return results


@pytest.mark.xdist_group("subprocess")
def test_two_processes_form_one_global_mesh():
  results = _run_processes(num_processes=2, devices_per_process=2)
  batch = distributed_worker.GLOBAL_BATCH
  z1, z2 = distributed_worker.global_inputs()
  expected_loss = _hcl_loss_numpy(z1, z2, temperature=0.5, tau_plus=0.1,
                                  beta=1.0)
  single_process_loss = float(losses.hcl_loss(
      z1, z2, temperature=0.5, tau_plus=0.1, beta=1.0))

  assert [r["process_index"] for r in results] == [0, 1]
  for r in results:
    assert r["mode"] == "explicit"
    assert r["info_process_index"] == r["process_index"]
    assert r["process_count"] == 2
    assert r["local_device_count"] == 2
    assert r["device_count"] == r["mesh_size"] == 4
    assert r["info_global_device_count"] == 4
    # psum over all 4 devices of both processes: 0 + 1 + ... + 7.
    assert r["psum"] == batch * (batch - 1) / 2
    np.testing.assert_allclose(r["loss"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(r["loss"], single_process_loss, rtol=1e-6)
  # Each process fed a disjoint half of the batch, together all of it.
  assert results[0]["local_rows"] + results[1]["local_rows"] == list(
      range(batch))
  # A few train steps of the tiny net, each process feeding its half of one
  # global batch, agree with one process feeding all of it to 4 devices.
  from hcl_jax.distributed.mesh import make_mesh
  single = distributed_worker.train_steps(make_mesh(jax.devices()[:4]), slice(None))
  for r in results:
    np.testing.assert_allclose(r["train_losses"], single["losses"], rtol=1e-5)
    assert len(r["params"]) == len(single["params"])
    # Element by element. Adam moves every element by up to lr = 1e-3 a step
    # whatever its gradient's size, so where a gradient is tiny the order of
    # the cross-process sum shows: measured 1.5e-7 (in 1 of the tiny net's
    # 1,660 elements); atol is 1/100 of one step.
    for got, want in zip(r["params"], single["params"]):
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The steps did train: the loss and parameters moved.
  assert single["losses"][-1] != single["losses"][0]
