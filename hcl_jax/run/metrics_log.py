"""Where the training run's numbers go: JSONL, TensorBoard, terminal.

In ``workdir`` (a local folder or gs://..., all through ``hcl_jax.run.workdir_fs``):
- ``config.json``, ``config.yaml``: the run's config, written on creation.
- ``metrics.jsonl``: one JSON object per logged step, e.g.
  ``{"step": 120, "time": 1732871000.1, "epoch": 2, "loss": 5.12, ...}``.
  With ``batch_size`` given, every line also has the throughput since the
  previous line: ``step_time_s``, ``images_per_sec`` (global),
  ``images_per_sec_per_device`` and, on a chip in
  ``hcl_jax.train.throughput.PEAKS`` once ``log_compiled`` gave the step's cost,
  ``mfu`` (a fraction of the chips' summed peak).
  A resumed run continues the file; lines of steps after ``start_step`` (logged by the killed run after its last checkpoint,
  so about to be redone) are dropped first, leaving one line per step.
  Non-finite floats are written as ``NaN`` / ``Infinity`` (Python's json
  reads them back; strict JSON parsers do not).
- ``events.out.tfevents.*``: TensorBoard scalars, one tag per metric, and
  the evaluation's accuracies as ``eval/*`` (``log_evaluation``).
  The records ``tf.summary.scalar`` writes (TensorFlow's Event protos in
  TFRecord framing; the ``tensorboard`` package is only needed to view
  them), written by this module through the workdir layer.
- Growing files are rewritten at most every ``flush_every_s`` seconds, on
  ``flush()`` (the run calls it with every checkpoint) and on ``close()``
  (object stores have no append).

On the terminal: a tqdm bar with ETA when stderr is a TTY, else one plain
line per ``log`` call (``step 120/900 (13%) loss 5.12 ... 410 img/s MFU 31.0%
ETA 3m12s``), which reads well in files and cluster logs.

Only the main process (``jax.process_index() == 0``) should write; the
others construct the logger with ``is_main_process=False`` and every method
is then a no-op, so callers need no ``if``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, TextIO

import jax
import numpy as np
from etils import epath

from hcl_jax.run import workdir_fs
from hcl_jax.run.tensorboard import TensorBoardScalars

from hcl_jax.run.files import CONFIG_JSON, METRICS_JSONL

CONFIG_YAML = "config.yaml"

# Shown first, in this order, on the terminal; anything else follows.
_TERMINAL_ORDER = ("epoch", "loss", "lr", "beta", "clamped_fraction")
# Throughput: in metrics.jsonl and TensorBoard; the terminal shows img/s and MFU.
_THROUGHPUT_KEYS = ("step_time_s", "images_per_sec", "images_per_sec_per_device", "mfu")


def to_python_scalar(name: str, value: Any) -> int | float | bool | str:
  """A jax/numpy/Python scalar as a plain Python int, float, bool or str."""
  if isinstance(value, (str, bool, int, float)):
    return value
  array = np.asarray(jax.device_get(value))
  if array.size != 1:
    raise ValueError(f"metric {name!r} must be a scalar, got shape "
                     f"{array.shape}")
  item = array.reshape(()).item()
  if not isinstance(item, (bool, int, float)):
    raise ValueError(f"metric {name!r} has unsupported type {array.dtype}")
  return item


def format_duration(seconds: float) -> str:
  """``59s``, ``3m12s``, ``1h02m``, ``2d03h``; ``?`` if not finite."""
  if not math.isfinite(seconds):
    return "?"
  s = max(0, int(round(seconds)))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _format_value(value: Any) -> str:
  if isinstance(value, bool) or isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    if value != 0 and math.isfinite(value) and not 1e-3 <= abs(value) < 1e5:
      return f"{value:.3e}"
    return f"{value:.4g}"
  return str(value)


def save_config(workdir: str | os.PathLike, config: Any) -> None:
  """Writes ``config`` (ml_collections ConfigDict or plain dict) to
  ``workdir/config.json`` and, for a ConfigDict, ``workdir/config.yaml``."""
  workdir = workdir_fs.as_path(workdir)
  if hasattr(config, "to_json_best_effort"):
    text = config.to_json_best_effort(indent=2, sort_keys=True)
  else:
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
  workdir_fs.write_text(workdir / CONFIG_JSON, text + "\n")
  if hasattr(config, "to_yaml"):
    workdir_fs.write_text(workdir / CONFIG_YAML, config.to_yaml())


def _lines_up_to(path: epath.Path, start_step: int) -> str:
  """The JSONL lines of ``path`` with ``step <= start_step``; a line cut short
  by a kill (not valid JSON) is dropped too."""
  if not path.exists():
    return ""
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line half-written when the process was killed
    if isinstance(record, dict) and record.get("step", 0) <= start_step:
      kept.append(line + "\n")
  return "".join(kept)


class MetricLogger:
  """Logs one training run's metrics to JSONL, TensorBoard and the terminal."""

  def __init__(self, workdir: str | os.PathLike, *, total_steps: int,
               config: Any = None, start_step: int = 0,
               batch_size: int | None = None, num_devices: int = 1,
               is_main_process: bool = True,
               tensorboard: bool = True, progress: str = "auto",
               stream: TextIO | None = None, flush_every_s: float = 10.0):
    """Args:
      workdir: the run's directory (created if missing).
      total_steps: the step count of the whole run (for % and ETA).
      config: saved to config.json / config.yaml now, if given.
      start_step: the step the run (re)starts from; lines of later steps in
        an existing metrics.jsonl are dropped, the bar starts there.
      batch_size: global batch size; if given, each ``log`` call adds the
        step time, images/s and images/s per device (and MFU, see
        ``log_compiled``) from the wall time since the previous call, or
        since ``log_compiled`` (so compilation is not in any interval);
        a ``log`` call's own ``images_per_sec`` is kept.
      num_devices: the devices the step runs on (for per-device images/s
        and MFU).
      is_main_process: False makes every method a no-op.
      tensorboard: write TensorBoard event files.
      progress: "auto" (bar if stderr is a TTY, else lines), "bar",
        "lines" or "none".
      stream: where plain lines go (default: sys.stdout at call time).
      flush_every_s: metrics.jsonl and the TensorBoard events are rewritten
        in the workdir at most this often, and on ``close()`` (see
        ``workdir_fs.RewrittenFile``).
    """
    if total_steps < 1:
      raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if progress not in ("auto", "bar", "lines", "none"):
      raise ValueError(f"progress must be auto|bar|lines|none, got "
                       f"{progress!r}")
    self.workdir = workdir_fs.as_path(workdir)
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.num_devices = num_devices
    self.step_cost = None  # a throughput.StepCost, from log_compiled
    self.enabled = is_main_process
    self._stream = stream
    self._jsonl = None
    self._tb = None
    self._bar = None
    self._last_step = start_step
    self._last_time = time.time()
    self._first_logged: tuple[int, float] | None = None
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    if config is not None:
      save_config(self.workdir, config)
    path = self.workdir / METRICS_JSONL
    self._jsonl = workdir_fs.RewrittenFile(
        path, initial=_lines_up_to(path, start_step).encode("utf-8"),
        flush_every_s=flush_every_s)
    self._jsonl.flush()
    if tensorboard:
      self._tb = TensorBoardScalars(self.workdir, flush_every_s=flush_every_s)
    if progress == "auto":
      progress = "bar" if sys.stderr.isatty() else "lines"
    self._mode = progress
    if progress == "bar":
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                       dynamic_ncols=True, file=sys.stderr)

  def log(self, step: int, metrics: Mapping[str, Any]) -> dict:
    """Logs ``metrics`` (scalars: jax/numpy/Python) for ``step``.

    Returns the record written to metrics.jsonl ({} when not main process).
    """
    if not self.enabled:
      return {}
    now = time.time()
    values = {k: to_python_scalar(k, v) for k, v in metrics.items()}
    if self.batch_size is not None and step > self._last_step:
      values = {**self._throughput(step, now), **values}
    record = {"step": int(step), "time": round(now, 3), **values}
    self._jsonl.append(json.dumps(record) + "\n")
    if self._tb is not None:
      self._tb.write(int(step), {
          k: float(v) for k, v in values.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if self._first_logged is None:
      self._first_logged = (step, now)
    self._show(step, values, now)
    self._last_step, self._last_time = step, now
    return record

  def _throughput(self, step: int, now: float) -> dict[str, float]:
    """Step time, images/s (global and per device) and MFU since the last
    ``log`` (or ``log_compiled``) call."""
    step_time = max(now - self._last_time, 1e-9) / (step - self._last_step)
    images_per_sec = self.batch_size / step_time
    out = {"step_time_s": step_time, "images_per_sec": images_per_sec,
           "images_per_sec_per_device": images_per_sec / self.num_devices}
    mfu = self.step_cost.mfu(step_time) if self.step_cost is not None else None
    if mfu is not None:
      out["mfu"] = mfu
    return out

  def log_compiled(self, seconds: float, step_cost: Any = None, *, what: str = "train step"
                   ) -> None:
    """Says how long compiling ``what`` took (and, given a
    ``throughput.StepCost``, its FLOPs and the peak MFU is measured against),
    and restarts the step clock: the next ``log`` call's interval starts now."""
    self.step_cost = step_cost
    self._last_time = time.time()
    detail = f" ({step_cost.describe()})" if step_cost is not None else ""
    self.write(f"Compiled the {what} in {seconds:.1f} s{detail}.")

  def log_evaluation(self, step: int, accuracies: Mapping[str, float]) -> None:
    """Evaluation accuracies (kNN monitor, linear readout) as TensorBoard
    scalars ``eval/<name>`` at training step ``step``, beside the training
    curves. (results.json, not metrics.jsonl, keeps them for programs.)"""
    if self.enabled and self._tb is not None:
      # Numbers only: the evaluation also names its protocol (readout: "fast").
      self._tb.write(int(step), {f"eval/{k}": float(v) for k, v in accuracies.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)})

  def eta_seconds(self, step: int, now: float | None = None) -> float:
    """Remaining time at the rate seen since the first ``log`` call (which
    excludes compilation); inf before two calls."""
    now = time.time() if now is None else now
    if self._first_logged is None or step <= self._first_logged[0]:
      return math.inf
    first_step, first_time = self._first_logged
    per_step = (now - first_time) / (step - first_step)
    return per_step * max(self.total_steps - step, 0)

  def progress_line(self, step: int, values: Mapping[str, Any],
                    now: float | None = None) -> str:
    """``step 120/900 (13%) epoch 2 loss 5.12 ... 410 img/s ETA 3m12s``."""
    parts = [f"step {step}/{self.total_steps} "
             f"({100 * step / self.total_steps:.0f}%)"]
    keys = [k for k in _TERMINAL_ORDER if k in values]
    keys += sorted(k for k in values
                   if k not in _TERMINAL_ORDER and k not in _THROUGHPUT_KEYS)
    parts += [f"{k} {_format_value(values[k])}" for k in keys]
    if "images_per_sec" in values:
      parts.append(f"{values['images_per_sec']:.0f} img/s")
    if "mfu" in values:
      parts.append(f"MFU {100 * values['mfu']:.1f}%")
    parts.append(f"ETA {format_duration(self.eta_seconds(step, now))}")
    return " ".join(parts)

  def write(self, message: str) -> None:
    """Prints a message without breaking the progress bar."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(message, file=sys.stderr)
    else:
      print(message, file=self._stream or sys.stdout, flush=True)

  def _show(self, step: int, values: Mapping[str, Any], now: float) -> None:
    if self._mode == "bar":
      short = {k: _format_value(values[k]) for k in ("loss", "lr", "beta")
               if k in values}
      if "images_per_sec" in values:
        short["img/s"] = f"{values['images_per_sec']:.0f}"
      self._bar.set_postfix(short, refresh=False)
      self._bar.update(max(step - self._bar.n, 0))  # redraws, with ETA
    elif self._mode == "lines":
      print(self.progress_line(step, values, now),
            file=self._stream or sys.stdout, flush=True)

  def flush(self) -> None:
    """Brings metrics.jsonl and the TensorBoard events on disk up to date.

    Called with every checkpoint: a run killed after checkpoint k then has
    the lines of every step <= k, which its resumption keeps.
    """
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    # The progress bar, then the files (each flushed, i.e. uploaded, once more).
    for name in ("_bar", "_jsonl", "_tb"):
      part = getattr(self, name)
      if part is not None:
        part.close()
        setattr(self, name, None)

  def __enter__(self) -> MetricLogger:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
