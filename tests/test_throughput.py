"""hcl_jax.train.throughput (FLOPs, peaks, MFU), hcl_jax.train.profiling's step range,
and MetricLogger's throughput fields. The full runs' metrics and profile are
checked in test_main.py."""

import json

import jax
import jax.numpy as jnp
import pytest

from gcs_emulator import BUCKET, gcs, gcs_env  # noqa: F401  (fixtures)
from hcl_jax.run import metrics_log
from hcl_jax.config import values as checks
from hcl_jax.train import profiling
from hcl_jax.train import throughput
from hcl_jax.run.metrics_log import MetricLogger


def test_flops_of_a_matmul_are_2mnk():
  m, k, n = 96, 64, 40
  lowered = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n)))
  assert throughput.program_flops(lowered) == 2 * m * n * k
  assert throughput.program_flops(lowered.compile()) == 2 * m * n * k


@pytest.mark.parametrize("kind,bf16,float32", [
    ("TPU v4", 275e12, 275e12),
    ("TPU v5 lite", 197e12, 197e12),
    ("TPU v5", 459e12, 459e12),
    ("TPU v6 lite", 918e12, 918e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 156e12),
    ("NVIDIA H100 80GB HBM3", 989e12, 494.5e12),
    ("NVIDIA H100 PCIe", 756e12, 378e12),
    ("NVIDIA H200", 989e12, 494.5e12),
])
def test_peak_table(kind, bf16, float32):
  assert throughput.peak_flops(kind, bf16=True) == bf16
  assert throughput.peak_flops(kind, bf16=False) == float32
  assert "http" in throughput.peak_for(kind).source


@pytest.mark.parametrize("kind", ["cpu", "TPU v4 lite", "TPU v3", "NVIDIA GeForce RTX 4090"])
def test_unknown_chips_have_no_peak_and_no_mfu(kind):
  assert throughput.peak_for(kind) is None
  cost = throughput.StepCost(flops_per_step=1e12, peak_per_chip=throughput.peak_flops(
      kind, bf16=True), num_devices=1, device_kind=kind)
  assert cost.mfu(0.5) is None
  assert cost.describe() == (f"1 TFLOP per step; no MFU: {kind!r} is not in "
                             "hcl_jax.train.throughput.PEAKS")


def test_mfu_by_hand():
  # 4 chips of 275 TFLOP/s = 1.1 PFLOP/s; 330 TFLOP in 1 s is 30 %.
  cost = throughput.StepCost(flops_per_step=330e12, peak_per_chip=275e12, num_devices=4,
                             device_kind="TPU v4")
  assert cost.mfu(1.0) == pytest.approx(0.30)
  assert cost.mfu(2.0) == pytest.approx(0.15)


def test_step_cost_counts_the_global_program(monkeypatch):
  monkeypatch.setattr(throughput, "device_kind", lambda: "TPU v4")
  m, k, n = 32, 16, 8
  lowered = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n)))
  cost = throughput.step_cost(lowered=lowered, compiled=lowered.compile(), num_devices=4,
                              bf16=True)
  assert cost.flops_per_step == 2 * m * n * k   # the global program's

  class NoAnalysis:
    def cost_analysis(self):
      raise NotImplementedError

  # Without the lowered program's count: the compiled one's (one device's) x 4.
  cost = throughput.step_cost(lowered=NoAnalysis(), compiled=lowered.compile(), num_devices=4,
                              bf16=True)
  assert cost.flops_per_step == 4 * 2 * m * n * k
  assert cost.peak_per_chip == 275e12 and cost.device_kind == "TPU v4"


class _Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_logger_throughput_fields_and_compile_line(tmp_path, monkeypatch, capsys):
  clock = _Clock()
  monkeypatch.setattr(metrics_log.time, "time", clock)
  cost = throughput.StepCost(flops_per_step=2e12, peak_per_chip=100e12, num_devices=4,
                             device_kind="TPU v4")
  logger = MetricLogger(tmp_path, total_steps=100, batch_size=64, num_devices=4,
                        tensorboard=False, progress="lines")
  clock.now = 1060.0        # a minute of compilation: in no interval
  logger.log_compiled(60.0, cost)
  clock.now = 1062.0
  logger.log(10, {"loss": 1.0})   # 10 steps in 2 s
  logger.close()
  (line,) = [json.loads(t) for t in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert line["step_time_s"] == pytest.approx(0.2)
  assert line["images_per_sec"] == pytest.approx(64 / 0.2)
  assert line["images_per_sec_per_device"] == pytest.approx(64 / 0.2 / 4)
  # 2 TFLOP per 0.2 s = 10 TFLOP/s of 400 TFLOP/s.
  assert line["mfu"] == pytest.approx(0.025)
  out = capsys.readouterr().out.splitlines()
  assert out[0] == ("Compiled the train step in 60.0 s (2 TFLOP per step; peak 100 TFLOP/s "
                    "per chip (TPU v4) x 4).")
  assert out[1] == "step 10/100 (10%) loss 1 320 img/s MFU 2.5% ETA ?"


@pytest.mark.parametrize("text,steps", [("", None), ("3,4", (3, 4)), ("1,1", (1, 1)),
                                        (" 2, 5", (2, 5))])
def test_profile_steps_parse(text, steps):
  assert checks.parse_step_range(text) == steps


@pytest.mark.parametrize("text", ["5", "4,3", "0,2", "a,b", "1,2,3", "1,"])
def test_profile_steps_refused_in_one_line(text):
  with pytest.raises(ValueError, match=r"^config\.profile_steps must be") as error:
    checks.parse_step_range(text)
  assert repr(text) in str(error.value) and "\n" not in str(error.value)


def test_profile_of_two_steps_reaches_a_gs_workdir(gcs_env, tmp_path, monkeypatch):
  import gzip
  monkeypatch.chdir(tmp_path)
  workdir = f"gs://{BUCKET}/profiled"
  profiler = profiling.StepProfiler(workdir, "2,3")
  @jax.jit
  def square(x):
    return x @ x / 64

  x = jnp.ones((64, 64))
  try:
    for step in range(1, 5):
      profiler.before_step(step)
      x = square(x)
      profiler.after_step(step, x)
  finally:
    profiler.close()
  names = gcs_env.list_objects(BUCKET, "profiled/profile/process_0/plugins/profile/")
  assert any(n.endswith(".xplane.pb") for n in names), names
  (perfetto,) = [n for n in names if n.endswith("perfetto_trace.json.gz")]
  events = json.loads(gzip.decompress(gcs_env.read_object(BUCKET, perfetto)))["traceEvents"]
  # Two steps traced: the jitted function ran twice inside the trace.
  # (The trace has nested events of the same name per call: count the outermost.)
  calls, end = 0, -1.0
  for e in sorted((e for e in events if e.get("name") == "PjitFunction(square)"),
                  key=lambda e: e["ts"]):
    if e["ts"] >= end:
      calls, end = calls + 1, e["ts"] + e.get("dur", 0)
  assert calls == 2, sorted({str(e.get("name")) for e in events})
  assert not list(tmp_path.rglob("gs:*"))  # nothing written to a local 'gs:' folder
