"""The workdir layer against a real GCS API (fake-gcs-server on 127.0.0.1).

Each writer of a run's workdir (metrics.jsonl, config, TensorBoard events,
orbax checkpoints, results.json, the process log) writes a gs:// workdir,
and what lands in the bucket is read back over the emulator's own JSON API
(``GcsEmulator.read_object``), not through the code under test. Nothing may
appear on local disk under a folder named ``gs:``.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from gcs_emulator import BUCKET, gcs, gcs_env  # noqa: F401  (fixtures)
from hcl_jax.run import workdir_fs
from hcl_jax.reproduce import runner
from hcl_jax.run.checkpointing import Checkpointer
from hcl_jax.run.metrics_log import MetricLogger
from hcl_jax.run.process_log import ProcessLog


@pytest.fixture
def in_scratch(tmp_path, monkeypatch):
  """Runs the test in an empty folder; fails if a local 'gs:' folder appears."""
  monkeypatch.chdir(tmp_path)
  yield tmp_path
  assert not list(tmp_path.rglob("gs:*")), "a gs:// path was written to local disk"


def test_metrics_config_and_tensorboard_reach_the_bucket(gcs_env, in_scratch, tmp_path):
  workdir = f"gs://{BUCKET}/fs/metrics"
  with MetricLogger(workdir, total_steps=4, config={"batch_size": 8},
                    progress="none") as logger:
    logger.log(1, {"loss": 2.5})
    logger.log(2, {"loss": 1.5})
  # A resumed run from step 1: step 2 is dropped, then redone.
  with MetricLogger(workdir, total_steps=4, start_step=1, progress="none") as logger:
    logger.log(2, {"loss": 1.25})
  lines = gcs_env.read_object(BUCKET, "fs/metrics/metrics.jsonl").decode().splitlines()
  assert [(json.loads(l)["step"], json.loads(l)["loss"]) for l in lines] == [(1, 2.5), (2, 1.25)]
  assert json.loads(gcs_env.read_object(BUCKET, "fs/metrics/config.json")) == {"batch_size": 8}

  events = [n for n in gcs_env.list_objects(BUCKET, "fs/metrics/")
            if "/events.out.tfevents." in n]
  assert len(events) == 2  # one per logger
  seen = {}
  for i, name in enumerate(events):
    local = tmp_path / f"events{i}"
    local.write_bytes(gcs_env.read_object(BUCKET, name))
    # TensorFlow's reader checks the TFRecord framing and CRCs.
    for event in tf.compat.v1.train.summary_iterator(str(local)):
      for value in event.summary.value:
        seen.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  assert sorted(seen["loss"]) == [(1, 2.5), (2, 1.25), (2, 1.5)]


def test_checkpoints_round_trip_through_the_bucket(gcs_env, in_scratch):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": np.int32(3)}
  with Checkpointer(f"gs://{BUCKET}/fs/ckpt", keep=2, save_every_steps=1) as ckpt:
    for step in (1, 2, 3):
      assert ckpt.maybe_save(step, jax.tree.map(lambda x: x * step, state), {"data_step": step})
  names = gcs_env.list_objects(BUCKET, "fs/ckpt/")
  assert {n.split("/")[2] for n in names} == {"2", "3"}  # keep=2
  template = jax.tree.map(jnp.zeros_like, state)
  with Checkpointer(f"gs://{BUCKET}/fs/ckpt", keep=2, save_every_steps=1) as ckpt:
    step, restored, extra = ckpt.restore_latest(template)
  assert step == 3 and extra == {"data_step": 3}
  np.testing.assert_array_equal(restored["w"], 3 * np.arange(6.0).reshape(2, 3))


def test_one_flipped_byte_in_the_bucket_falls_back_to_the_previous_step(gcs_env, in_scratch,
                                                                        caplog):
  """The CRC-32 saved with each step catches a changed byte on gs:// too."""
  import logging
  from etils import epath
  values = {s: np.random.default_rng(s).standard_normal(1000).astype(np.float32) for s in (1, 2)}
  with Checkpointer(f"gs://{BUCKET}/fs/flip", keep=2, save_every_steps=1) as ckpt:
    for step in (1, 2):
      ckpt.maybe_save(step, {"w": jnp.asarray(values[step])}, {"data_step": step})
  data = [n for n in gcs_env.list_objects(BUCKET, "fs/flip/2/state/") if "/d/" in n]
  largest = max(data, key=lambda n: len(gcs_env.read_object(BUCKET, n)))
  blob = bytearray(gcs_env.read_object(BUCKET, largest))
  blob[len(blob) // 2] ^= 0x01
  epath.Path(f"gs://{BUCKET}/{largest}").write_bytes(bytes(blob))
  with caplog.at_level(logging.WARNING, logger="hcl_jax.run.checkpointing"):
    with Checkpointer(f"gs://{BUCKET}/fs/flip", keep=2, save_every_steps=1) as ckpt:
      step, restored, extra = ckpt.restore_latest({"w": jnp.zeros(1000)})
  assert step == 1 and extra == {"data_step": 1}
  np.testing.assert_array_equal(np.asarray(restored["w"]), values[1])
  assert any("step 2" in r.getMessage() and "CRC-32 mismatch" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_results_status_and_process_log_in_the_bucket(gcs_env, in_scratch, capsys):
  workdir = f"gs://{BUCKET}/fs/run"
  assert runner.run_status(workdir) == "new"
  assert runner.read_results(workdir) is None
  workdir_fs.write_json(f"{workdir}/results.json", {"linear_top1": 12.5})
  assert json.loads(gcs_env.read_object(BUCKET, "fs/run/results.json")) == {"linear_top1": 12.5}
  assert runner.run_status(workdir) == "done"
  assert runner.read_results(workdir) == {"linear_top1": 12.5}

  import logging
  with ProcessLog(workdir, 3):
    print("printed line")
    print("to stderr", file=sys.stderr)
    logging.getLogger("hcl_jax.test").warning("a warning record")
  text = gcs_env.read_object(BUCKET, "fs/run/logs/process_3.log").decode()
  assert "printed line" in text and "to stderr" in text and "a warning record" in text
  with ProcessLog(workdir, 3):  # a resumed job appends
    print("second run")
  text2 = gcs_env.read_object(BUCKET, "fs/run/logs/process_3.log").decode()
  assert text2.startswith(text) and "second run" in text2[len(text):]
  assert "printed line" in capsys.readouterr().out  # still on the terminal too


def test_local_workdir_uses_the_same_layer(tmp_path):
  workdir_fs.write_json(tmp_path / "a" / "results.json", {"x": 1})
  assert json.loads((tmp_path / "a" / "results.json").read_text()) == {"x": 1}
  assert [p.name for p in (tmp_path / "a").iterdir()] == ["results.json"]  # no temp left
  assert workdir_fs.as_path("rel").is_absolute()
  assert str(workdir_fs.as_path("gs://b/x")) == "gs://b/x"
  assert isinstance(workdir_fs.as_path(pathlib.Path("x")), type(workdir_fs.as_path("y")))
