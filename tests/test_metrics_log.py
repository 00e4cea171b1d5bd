"""MetricLogger: JSONL, config files, TensorBoard, terminal progress."""

import glob
import io
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import yaml

from hcl_jax.run import metrics_log
from hcl_jax.run.metrics_log import MetricLogger, format_duration

REQUIRED_KEYS = {"step", "epoch", "loss", "lr", "beta", "clamped_fraction",
                 "images_per_sec"}


class FakeClock:
  def __init__(self, start: float):
    self.now = start

  def __call__(self) -> float:
    return self.now


@pytest.fixture
def clock(monkeypatch):
  c = FakeClock(1000.0)
  monkeypatch.setattr(metrics_log.time, "time", c)
  return c


def _config():
  config = ml_collections.ConfigDict()
  config.batch_size = 32
  config.loss = ml_collections.ConfigDict({"name": "hcl", "beta": 1.0})
  config.augment = ml_collections.ConfigDict({"crop_scale": (0.08, 1.0)})
  return config


def _metrics(loss):
  # jax, numpy and Python scalars, as a train step's metrics arrive.
  return {"epoch": 1, "loss": jnp.float32(loss), "lr": np.float64(1e-3),
          "beta": 1.0, "clamped_fraction": jnp.array([0.25])}


def _read_jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_jsonl_lines_config_and_plain_progress(tmp_path, clock, capsys):
  logger = MetricLogger(tmp_path, total_steps=100, config=_config(),
                        batch_size=32, tensorboard=False)
  clock.now = 1004.0
  logger.log(10, _metrics(5.5))     # 10 steps in 4 s (incl. compilation)
  clock.now = 1014.0
  logger.log(20, _metrics(4.25))    # 10 steps in 10 s
  logger.close()

  lines = _read_jsonl(tmp_path)
  assert [r["step"] for r in lines] == [10, 20]
  for record in lines:
    assert REQUIRED_KEYS <= record.keys()
    assert all(isinstance(v, (int, float)) for v in record.values())
  assert lines[0]["loss"] == 5.5 and lines[1]["loss"] == 4.25
  assert lines[1]["clamped_fraction"] == 0.25 and lines[1]["lr"] == 1e-3
  assert lines[0]["images_per_sec"] == pytest.approx(10 * 32 / 4.0)
  assert lines[1]["images_per_sec"] == pytest.approx(10 * 32 / 10.0)

  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved == {"augment": {"crop_scale": [0.08, 1.0]}, "batch_size": 32,
                   "loss": {"beta": 1.0, "name": "hcl"}}
  assert (tmp_path / "config.yaml").exists()
  assert "batch_size: 32" in (tmp_path / "config.yaml").read_text()

  out = capsys.readouterr().out.splitlines()
  # pytest's captured stderr is no TTY: plain lines, one per log call.
  assert len(out) == 2
  # ETA unknown after the first log (its interval includes compilation).
  assert out[0] == ("step 10/100 (10%) epoch 1 loss 5.5 lr 0.001 beta 1 "
                    "clamped_fraction 0.25 80 img/s ETA ?")
  # 1 s/step since the first log (step 10), 80 steps left.
  assert out[1] == ("step 20/100 (20%) epoch 1 loss 4.25 lr 0.001 "
                    "beta 1 clamped_fraction 0.25 32 img/s ETA 1m20s")


def test_resume_drops_lines_after_start_step_and_appends(tmp_path, clock):
  with MetricLogger(tmp_path, total_steps=50, tensorboard=False,
                    progress="none") as logger:
    for step in (10, 20, 30):
      logger.log(step, {"loss": float(step)})
  # A line cut short by the kill.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "lo')
  # The run resumes from its checkpoint at step 20, redoes 30, goes on.
  with MetricLogger(tmp_path, total_steps=50, start_step=20,
                    tensorboard=False, progress="none") as logger:
    logger.log(30, {"loss": 3.5})
    logger.log(40, {"loss": 4.5})
  lines = _read_jsonl(tmp_path)
  assert [(r["step"], r["loss"]) for r in lines] == [
      (10, 10.0), (20, 20.0), (30, 3.5), (40, 4.5)]


def test_non_main_process_writes_nothing(tmp_path, capsys):
  logger = MetricLogger(tmp_path / "run", total_steps=10, config=_config(),
                        is_main_process=False)
  assert logger.log(1, {"loss": 1.0}) == {}
  logger.write("hello")
  logger.close()
  assert not (tmp_path / "run").exists()
  assert capsys.readouterr().out == ""


def test_flush_writes_every_logged_step_before_close(tmp_path):
  # The run flushes with every checkpoint: a kill -9 after checkpoint k must
  # find the lines of steps <= k on disk, long before flush_every_s passes.
  logger = MetricLogger(tmp_path, total_steps=10, progress="none", flush_every_s=1e9)
  for step in (1, 2, 3):
    logger.log(step, {"loss": float(step)})
  jsonl = tmp_path / "metrics.jsonl"
  assert not jsonl.exists() or jsonl.read_text() == ""   # buffered until now
  events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  sizes = [os.path.getsize(e) for e in events]
  logger.flush()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 2.0), (3, 3.0)]
  events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert len(events) == 1 and os.path.getsize(events[0]) > (sizes[0] if sizes else 0)
  logger.close()


def test_tensorboard_scalars(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with MetricLogger(tmp_path, total_steps=10, progress="none") as logger:
    logger.log(1, {"loss": 2.5, "lr": 0.125})
    logger.log(2, {"loss": jnp.float32(1.5), "lr": 0.125})
  files = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert len(files) == 1
  seen = {}
  for event in tf.compat.v1.train.summary_iterator(files[0]):
    for value in event.summary.value:
      assert value.metadata.plugin_data.plugin_name == "scalars"
      seen[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  assert seen == {("loss", 1): 2.5, ("lr", 1): 0.125, ("loss", 2): 1.5,
                  ("lr", 2): 0.125}


def test_progress_bar_mode(tmp_path, monkeypatch):
  fake_stderr = io.StringIO()
  monkeypatch.setattr(metrics_log.sys, "stderr", fake_stderr)
  with MetricLogger(tmp_path, total_steps=100, start_step=40,
                    tensorboard=False, progress="bar") as logger:
    logger.log(50, {"loss": 1.25})
  text = fake_stderr.getvalue()
  assert "50/100" in text and "loss=1.25" in text


def test_bad_metric_and_arguments(tmp_path):
  with pytest.raises(ValueError, match="total_steps"):
    MetricLogger(tmp_path, total_steps=0)
  with pytest.raises(ValueError, match="progress"):
    MetricLogger(tmp_path, total_steps=1, progress="fancy")
  with MetricLogger(tmp_path, total_steps=5, tensorboard=False,
                    progress="none") as logger:
    with pytest.raises(ValueError, match="'loss'.*scalar"):
      logger.log(1, {"loss": jnp.zeros(3)})


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (59.4, "59s"), (192, "3m12s"), (3720, "1h02m"),
    (2 * 86400 + 3 * 3600 + 5, "2d03h"), (float("inf"), "?")])
def test_format_duration(seconds, text):
  assert format_duration(seconds) == text


def test_config_yaml_roundtrip(tmp_path):
  metrics_log.save_config(tmp_path, _config())
  loaded = yaml.unsafe_load((tmp_path / "config.yaml").read_text())
  assert loaded["batch_size"] == 32 and loaded["loss"]["name"] == "hcl"
