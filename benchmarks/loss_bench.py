"""Forward+backward time and peak memory of the contrastive losses.

Three suites, each printing one markdown table:

  compare  hcl / dcl / nt_xent (ours, jit(value_and_grad)) side by side with a
           PyTorch statement of the published exp-space criterion (Robinson et
           al.'s HCL code), B = 256, 1024, 4096, D = 128; checks that both give
           the same loss value.
  blocks   ours with the default block_size (None) vs a sweep of explicit
           block sizes (anchors per block of the similarity matrix) at
           B = 256, 1024, 4096, 16384: time, peak memory, XLA temporaries.
  sharded  8 simulated CPU devices: per-device memory_analysis() of the loss
           + gradient under jit with NamedSharding and under jax.shard_map
           (axis_name="data"), default and --block-size blocks, vs one (2B)^2
           fp32 matrix.

Every (impl, loss, B) measurement runs in its own subprocess (with a timeout).
Time: median of --reps calls after one warm-up call. Peak memory: the
process's peak RSS above its RSS right before the first call (VmHWM is reset
through /proc/self/clear_refs; a sampling thread is the fallback).

  .venv/bin/python benchmarks/loss_bench.py --suite compare
  .venv/bin/python benchmarks/loss_bench.py --suite blocks
  .venv/bin/python benchmarks/loss_bench.py --suite sharded
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

DIM = 128
TEMPERATURE, TAU_PLUS, BETA = 0.5, 0.1, 1.0
BLOCK_SWEEP = (64, 128, 256, 512, 1024)
# loss name -> (hyperparameters of the published criterion: estimator, tau_plus, beta)
LOSSES = {
    "hcl": ("hard", TAU_PLUS, BETA),
    "dcl": ("hard", TAU_PLUS, 0.0),
    "nt_xent": ("easy", 0.0, 0.0),
}
MB = 1 << 20


# ----------------------------------------------------------------- memory --

def _proc_status_kb(key: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(key + ":"):
        return int(line.split()[1])
  raise KeyError(key)


class PeakRss:
  """Peak resident memory of this process above a baseline, in bytes."""

  def __init__(self):
    self.baseline = _proc_status_kb("VmRSS") * 1024
    try:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
      self.method = "VmHWM"
      self._peak = 0
    except OSError:
      self.method = "sampled VmRSS"
      self._peak = self.baseline
      self._stop = threading.Event()
      self._thread = threading.Thread(target=self._sample, daemon=True)
      self._thread.start()

  def _sample(self):
    while not self._stop.is_set():
      self._peak = max(self._peak, _proc_status_kb("VmRSS") * 1024)
      time.sleep(0.002)

  def above_baseline(self) -> int:
    if self.method == "VmHWM":
      return _proc_status_kb("VmHWM") * 1024 - self.baseline
    self._stop.set()
    self._thread.join()
    return self._peak - self.baseline


def _inputs(batch: int, dim: int):
  import numpy as np
  rng = np.random.default_rng(0)
  return (rng.standard_normal((batch, dim), dtype=np.float32),
          rng.standard_normal((batch, dim), dtype=np.float32))


def _time_calls(call, reps: int) -> list[float]:
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return times


# ---------------------------------------------------------------- workers --
# Each worker runs in a fresh subprocess and prints one JSON line.

def _jax_loss_fn(loss: str, block_size):
  from hcl_jax import losses
  if loss == "hcl":
    return lambda a, b: losses.hcl_loss(a, b, temperature=TEMPERATURE, tau_plus=TAU_PLUS,
                                        beta=BETA, block_size=block_size)
  if loss == "dcl":
    return lambda a, b: losses.dcl_loss(a, b, temperature=TEMPERATURE, tau_plus=TAU_PLUS,
                                        block_size=block_size)
  return lambda a, b: losses.nt_xent_loss(a, b, temperature=TEMPERATURE, block_size=block_size)


def worker_jax(loss: str, batch: int, block_size, reps: int, max_temp_bytes) -> dict:
  import jax
  import jax.numpy as jnp
  fn = jax.jit(jax.value_and_grad(_jax_loss_fn(loss, block_size), argnums=(0, 1)))
  spec = jax.ShapeDtypeStruct((batch, DIM), jnp.float32)
  compiled = fn.lower(spec, spec).compile()
  analysis = compiled.memory_analysis()
  temp = int(analysis.temp_size_in_bytes)
  result = {"temp_bytes": temp}
  if max_temp_bytes is not None and temp > max_temp_bytes:
    result["skipped"] = f"does not fit (XLA temp {temp / 2**30:.1f} GiB)"
    return result
  z1, z2 = (jnp.asarray(z) for z in _inputs(batch, DIM))
  jax.block_until_ready((z1, z2))
  peak = PeakRss()
  value, _ = jax.block_until_ready(compiled(z1, z2))  # warm-up
  times = _time_calls(lambda: jax.block_until_ready(compiled(z1, z2)), reps)
  result.update(loss=float(value), times=times, peak_bytes=peak.above_baseline(),
                mem_method=peak.method)
  return result


def _negative_mask(batch: int):
  """The published get_negative_mask, as written there (a Python loop)."""
  import torch
  mask = torch.ones((batch, 2 * batch), dtype=bool)
  for i in range(batch):
    mask[i, i] = 0
    mask[i, i + batch] = 0
  return torch.cat((mask, mask), 0)


def _torch_criterion(out_1, out_2, mask, tau_plus, batch_size, beta, estimator, temperature):
  """The published HCL criterion; F.normalize added (our loss normalises inside)."""
  import numpy as np
  import torch
  import torch.nn.functional as F
  out_1, out_2 = F.normalize(out_1, dim=-1), F.normalize(out_2, dim=-1)
  out = torch.cat([out_1, out_2], dim=0)
  neg = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
  neg = neg.masked_select(mask).view(2 * batch_size, -1)
  pos = torch.exp(torch.sum(out_1 * out_2, dim=-1) / temperature)
  pos = torch.cat([pos, pos], dim=0)
  if estimator == "hard":
    N = batch_size * 2 - 2
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    Ng = (-tau_plus * N * pos + reweight_neg) / (1 - tau_plus)
    Ng = torch.clamp(Ng, min=N * np.e ** (-1 / temperature))
  elif estimator == "easy":
    Ng = neg.sum(dim=-1)
  return (-torch.log(pos / (pos + Ng))).mean()


def worker_torch(loss: str, batch: int, reps: int) -> dict:
  import torch
  estimator, tau_plus, beta = LOSSES[loss]
  start = time.perf_counter()
  mask = _negative_mask(batch)  # built once, outside the timed region
  mask_seconds = time.perf_counter() - start
  z1, z2 = (torch.from_numpy(z).requires_grad_(True) for z in _inputs(batch, DIM))

  def call():
    z1.grad = z2.grad = None
    value = _torch_criterion(z1, z2, mask, tau_plus, batch, beta, estimator, TEMPERATURE)
    value.backward()
    return value

  peak = PeakRss()
  value = call()  # warm-up
  times = _time_calls(call, reps)
  return {"loss": float(value.detach()), "times": times, "peak_bytes": peak.above_baseline(),
          "mem_method": peak.method, "mask_seconds": mask_seconds,
          "threads": torch.get_num_threads()}


def worker_sharded(batch: int, block_size) -> dict:
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  from hcl_jax import losses
  from hcl_jax.distributed import mesh as mesh_lib
  mesh = mesh_lib.make_mesh()
  sharding = mesh_lib.batch_sharding(mesh)
  spec = jax.ShapeDtypeStruct((batch, DIM), jnp.float32, sharding=sharding)
  hp = dict(temperature=TEMPERATURE, tau_plus=TAU_PLUS, beta=BETA, block_size=block_size)

  jit_fn = jax.jit(jax.value_and_grad(lambda a, b: losses.hcl_loss(a, b, **hp), argnums=(0, 1)),
                   in_shardings=(sharding, sharding))

  def local(a, b):
    value, grads = jax.value_and_grad(
        lambda x, y: losses.hcl_loss(x, y, axis_name=mesh_lib.DATA_AXIS, **hp),
        argnums=(0, 1))(a, b)
    return value, grads

  data = P(mesh_lib.DATA_AXIS)
  shard_fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(data, data),
                                   out_specs=(P(), (data, data))))
  out = {"devices": len(jax.devices())}
  z1, z2 = (jax.device_put(jnp.asarray(z), sharding) for z in _inputs(batch, DIM))
  values = {}
  for name, fn in (("jit+NamedSharding", jit_fn), ("shard_map", shard_fn)):
    compiled = fn.lower(spec, spec).compile()
    a = compiled.memory_analysis()
    out[name] = {k: int(getattr(a, k)) for k in (
        "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
        "generated_code_size_in_bytes")}
    values[name] = float(compiled(z1, z2)[0])
  out["loss_values"] = values
  return out


def _worker_main(spec: dict) -> None:
  kind = spec["kind"]
  threads = spec.get("threads")
  if threads:
    # Pin before jax / torch start their thread pools (XLA sizes its pool from
    # the affinity mask); torch's intra-op pool is set explicitly too.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    import torch
    torch.set_num_threads(threads)
  if kind == "jax":
    result = worker_jax(spec["loss"], spec["batch"], spec.get("block_size"), spec["reps"],
                        spec.get("max_temp_bytes"))
  elif kind == "torch":
    result = worker_torch(spec["loss"], spec["batch"], spec["reps"])
  else:
    result = worker_sharded(spec["batch"], spec.get("block_size"))
  print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------- driver --

def _run(spec: dict, timeout: float, env_extra: dict | None = None) -> dict:
  env = dict(os.environ)
  env.update(env_extra or {})
  cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    return {"error": f"timeout after {timeout:.0f} s"}
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {"error": f"rc {proc.returncode}: " + " | ".join(tail)}


def _ms(result: dict) -> str:
  if "times" not in result:
    return result.get("skipped") or result.get("error", "?")
  return f"{1e3 * statistics.median(result['times']):.1f}"


def _median(result: dict):
  return statistics.median(result["times"]) if "times" in result else None


def _mb(nbytes) -> str:
  return "-" if nbytes is None else f"{nbytes / MB:.1f}"


def _ratio(a, b) -> str:
  return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def _reps(batch: int, base: int) -> int:
  return base if batch <= 1024 else max(3, base // 2)


def suite_compare(args) -> None:
  batches = args.batches or [256, 1024, 4096]
  rows, notes = [], []
  for loss in args.losses:
    for batch in batches:
      reps = _reps(batch, args.reps)
      common = {"loss": loss, "batch": batch, "reps": reps, "threads": args.threads}
      ours = _run({"kind": "jax", **common}, args.timeout)
      theirs = _run({"kind": "torch", **common}, args.timeout)
      rows.append((loss, batch, ours, theirs))
      if "loss" in ours and "loss" in theirs:
        a, b = ours["loss"], theirs["loss"]
        if b == b and abs(b) != float("inf"):
          rel = abs(a - b) / abs(b)
          notes.append(f"{loss} B={batch}: jax {a:.7f} torch {b:.7f} rel diff {rel:.1e} "
                       f"{'OK' if rel <= 1e-4 else 'MISMATCH (> 1e-4)'}")
        else:
          notes.append(f"{loss} B={batch}: torch loss not finite ({b}); jax {a:.7f}")
  threads = next((t.get("threads") for *_, t in rows if "threads" in t), "?")
  method = next((o.get("mem_method") for _, _, o, _ in rows if "mem_method" in o), "?")
  print(f"\n## compare: fwd+bwd, D={DIM}, t={TEMPERATURE}, tau+={TAU_PLUS}, beta={BETA} (hcl); "
        f"median of reps after warm-up; threads {args.threads or 'all'} (torch {threads}); peak = {method} above baseline")
  print("| loss | B | jax ms | torch ms | speed-up | jax peak MB | torch peak MB | mem ratio "
        "| jax XLA temp MB | torch mask build ms (untimed) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for loss, batch, ours, theirs in rows:
    print(f"| {loss} | {batch} | {_ms(ours)} | {_ms(theirs)} "
          f"| {_ratio(_median(theirs), _median(ours))}x "
          f"| {_mb(ours.get('peak_bytes'))} | {_mb(theirs.get('peak_bytes'))} "
          f"| {_ratio(theirs.get('peak_bytes'), ours.get('peak_bytes'))}x "
          f"| {_mb(ours.get('temp_bytes'))} "
          f"| {1e3 * theirs['mask_seconds']:.1f} |" if "mask_seconds" in theirs else
          f"| {loss} | {batch} | {_ms(ours)} | {_ms(theirs)} | - | - | - | - | - | - |")
  print("\nspeed-up = torch ms / jax ms; mem ratio = torch peak / jax peak. The torch side "
        "is timed with the negative mask prebuilt (the published code rebuilds it on every "
        "call, which costs the last column on top).")
  print("loss values (rtol 1e-4 where torch is finite):")
  for note in notes:
    print("  " + note)


def suite_blocks(args) -> None:
  batches = args.batches or [256, 1024, 4096, 16384]
  max_temp = int(args.max_temp_gb * 2**30)
  rows = []
  for batch in batches:
    reps = max(2, args.reps // 2) if batch >= 8192 else args.reps
    blocks = [None] + (list(BLOCK_SWEEP) if batch <= args.sweep_max_batch else [])
    for block in blocks:
      result = _run({"kind": "jax", "loss": "hcl", "batch": batch, "block_size": block,
                     "reps": reps, "max_temp_bytes": max_temp, "threads": args.threads},
                    args.timeout)
      if block is None:
        default = result
      rows.append((batch, block, result, default))
  print(f"\n## blocks: hcl fwd+bwd, D={DIM}, default block_size (None) vs explicit block "
        f"sizes (anchors per block); peak = RSS above baseline")
  print("| B | block_size | ms | time vs default | peak MB | XLA temp MB | one (2B)^2 fp32 MB | loss |")
  print("|---|---|---|---|---|---|---|---|")
  for batch, block, result, default in rows:
    full = (2 * batch) ** 2 * 4
    vs = "-" if block is None else _ratio(_median(result), _median(default)) + "x"
    value = f"{result['loss']:.6f}" if "loss" in result else "-"
    print(f"| {batch} | {block or 'None (default)'} | {_ms(result)} | {vs} "
          f"| {_mb(result.get('peak_bytes'))} | {_mb(result.get('temp_bytes'))} | {_mb(full)} "
          f"| {value} |")
  print("\ntime vs default = explicit block median / default median.")


def suite_sharded(args) -> None:
  batch = (args.batches or [4096])[0]
  env = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8"}
  full = (2 * batch) ** 2 * 4
  print(f"\n## sharded: hcl loss+grad, B={batch}, D={DIM}, 8 simulated CPU devices, "
        f"per-device compiled.memory_analysis(); one (2B)^2 fp32 matrix = {full / MB:.0f} MB")
  print("| program | block | temp MB | args MB | out MB | temp / (2B)^2 matrix | holds whole "
        "matrix? | loss |")
  print("|---|---|---|---|---|---|---|---|")
  for block in (None, args.block_size):
    result = _run({"kind": "sharded", "batch": batch, "block_size": block}, args.timeout, env)
    if "error" in result:
      print(f"| - | {block} | {result['error']} | | | | | |")
      continue
    for name in ("jit+NamedSharding", "shard_map"):
      m = result[name]
      temp = m["temp_size_in_bytes"]
      print(f"| {name} | {block or 'None (default)'} | {_mb(temp)} | {_mb(m['argument_size_in_bytes'])} "
            f"| {_mb(m['output_size_in_bytes'])} | {temp / full:.3f} "
            f"| {'yes (temp >= matrix)' if temp >= full else 'no'} "
            f"| {result['loss_values'][name]:.6f} |")


def main() -> None:
  if len(sys.argv) >= 3 and sys.argv[1] == "--_worker":
    _worker_main(json.loads(sys.argv[2]))
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--suite", choices=["compare", "blocks", "sharded"], required=True)
  parser.add_argument("--batches", type=int, nargs="*", default=None,
                      help="batch sizes (default: the suite's)")
  parser.add_argument("--losses", nargs="*", default=list(LOSSES), choices=list(LOSSES))
  parser.add_argument("--block-size", type=int, default=64,
                      help="sharded: the explicit block size measured beside the default")
  parser.add_argument("--sweep-max-batch", type=int, default=4096,
                      help="blocks: sweep block sizes only up to this B (the default above)")
  parser.add_argument("--threads", type=int, default=None,
                      help="pin each measurement to this many cores (torch threads too); "
                           "default: all cores")
  parser.add_argument("--reps", type=int, default=7, help="timed calls (halved for large B)")
  parser.add_argument("--max-temp-gb", type=float, default=8.0)
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
  args = parser.parse_args()
  {"compare": suite_compare, "blocks": suite_blocks, "sharded": suite_sharded}[args.suite](args)


if __name__ == "__main__":
  main()
