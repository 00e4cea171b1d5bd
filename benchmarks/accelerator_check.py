"""One command on a fresh GPU/TPU host: is this machine good for the paper runs?

Prints one markdown table:
- the HCL loss, forward + backward, ours (jit) vs the published PyTorch
  criterion (``benchmarks/loss_bench.py``'s copy of it) on the same device,
  B = 1024, 4096, 16384 (D = 128), with both losses' values;
- the paper's train step (configs/paper.py: ResNet-50, CIFAR stem, 32x32,
  batch 256 per view, HCL, Adam; ours float32 as published and bf16
  ``mixed_precision``) vs a PyTorch reference of the same network
  (torchvision's ResNet blocks, the published CIFAR stem and head; channels_last
  and AMP bf16 autocast) on the same device: step time, images/s, MFU
  (``hcl_jax.train.throughput``: our step's FLOPs over the chip's peak; the torch
  row uses the same FLOP count), peak device memory (ours: XLA's
  ``memory_analysis()`` of the compiled step, arguments + outputs +
  temporaries; torch: ``torch.cuda.max_memory_allocated``);
- the host input pipeline's two-view images/s for cifar10 and stl10 on all
  host cores (``benchmarks/input_bench.py``, generated data).

Each part runs in its own subprocess (JAX and torch never share a GPU's
memory; torchvision must not be imported after TensorFlow). The full check
takes a few minutes on one accelerator (two ResNet-50 compilations dominate);
``--smoke`` (tiny sizes: B = 64/256 losses, ResNet-18 at 1/16 width, 8x8
images, batch 16, float32 only) checks the plumbing on a CPU; on the 2-core
development machine it took 114 s (the test, load ~2) to 203 s (load ~14),
most of it compiling the step (tests/test_accelerator_check.py runs it).

  .venv/bin/python benchmarks/accelerator_check.py            # on the accelerator host
  .venv/bin/python benchmarks/accelerator_check.py --smoke    # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _ROOT)
sys.path.insert(0, _HERE)

FULL = {"loss_batches": (1024, 4096, 16384), "model": "resnet50", "width": 1.0,
        "image_size": 32, "batch": 256, "bn_group": 128, "precisions": ("float32", "bf16"),
        "steps": 10, "rounds": 3,
        "input_batches": 12, "input_batch_size": 256, "datasets": ("cifar10", "stl10")}
SMOKE = {"loss_batches": (64, 256), "model": "resnet18", "width": 0.0625,
         "image_size": 8, "batch": 16, "bn_group": 0, "precisions": ("float32",),
         "steps": 2, "rounds": 2,
         "input_batches": 2, "input_batch_size": 32, "datasets": ("cifar10",)}
MIB = 1 << 20


# ---------------------------------------------------------------- workers --
# Each runs in a fresh subprocess and prints one "RESULT {json}" line.

def _median_time(call, steps: int, rounds: int) -> float:
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
      call()
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def _paper_config(sizes: dict, *, bf16: bool):
  from hcl_jax.config import check as config_check
  config = config_check.load("configs/paper.py:dataset=cifar10,method=hcl")
  config.model.name, config.model.width_multiplier = sizes["model"], sizes["width"]
  config.image_size, config.batch_size = sizes["image_size"], sizes["batch"]
  config.model.bn_group_size = sizes["bn_group"]
  config.mixed_precision = bf16
  return config_check.validate(config)


def worker_jax(sizes: dict) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import loss_bench
  from hcl_jax.distributed import mesh as mesh_lib
  from hcl_jax import models
  from hcl_jax.train import optim
  from hcl_jax.train import throughput
  from hcl_jax.train import step as train_step_lib

  out = {"device": throughput.device_kind(), "devices": jax.device_count(),
         "platform": jax.default_backend(), "loss": {}, "step": {}}
  for batch in sizes["loss_batches"]:
    fn = jax.jit(jax.value_and_grad(loss_bench._jax_loss_fn("hcl", None), argnums=(0, 1)))
    z1, z2 = (jnp.asarray(z) for z in loss_bench._inputs(batch, loss_bench.DIM))
    compiled = fn.lower(z1, z2).compile()
    value, _ = jax.block_until_ready(compiled(z1, z2))
    seconds = _median_time(lambda: jax.block_until_ready(compiled(z1, z2)), 3, sizes["rounds"])
    memory = compiled.memory_analysis()
    out["loss"][batch] = {"value": float(value), "seconds": seconds,
                          "memory": _xla_bytes(memory)}
  for precision in sizes["precisions"]:
    bf16 = precision == "bf16"
    config = _paper_config(sizes, bf16=bf16)
    mesh = mesh_lib.make_mesh()
    model = models.create_model(config)
    state = train_step_lib.create_train_state(
        model, optim.make_optimizer(config, 100), jax.random.key(0), mesh,
        (config.image_size, config.image_size, 3))
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.image_size, config.image_size, 3)
    batch = jax.device_put({"view1": rng.normal(size=shape).astype(np.float32),
                            "view2": rng.normal(size=shape).astype(np.float32),
                            "label": np.zeros((config.batch_size,), np.int32)},
                           mesh_lib.batch_sharding(mesh))
    step = train_step_lib.make_train_step(config, mesh, 100, model)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    cost = throughput.step_cost(lowered=lowered, compiled=compiled,
                                num_devices=mesh.size, bf16=bf16)
    holder = {"state": state}

    def run():
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics

    jax.block_until_ready(run())   # warm-up
    seconds = _median_time(lambda: jax.block_until_ready(run()), sizes["steps"],
                           sizes["rounds"])
    out["step"][precision] = {
        "seconds": seconds, "compile_s": compile_s, "flops": cost.flops_per_step,
        "peak_per_chip": cost.peak_per_chip, "mfu": cost.mfu(seconds),
        "memory": _xla_bytes(compiled.memory_analysis())}
  return out


def _xla_bytes(analysis) -> int | None:
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes)


def _torch_model(model: str, width: float):
  """The published network in torch: torchvision's ResNet blocks with the
  CIFAR stem (3x3 stride-1 conv, no max-pool) and the projection head."""
  import torch.nn as nn
  from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1
  block, layers = {"resnet18": (BasicBlock, (2, 2, 2, 2)),
                   "resnet34": (BasicBlock, (3, 4, 6, 3)),
                   "resnet50": (Bottleneck, (3, 4, 6, 3))}[model]
  base = int(round(64 * width))
  modules = [nn.Conv2d(3, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True)]
  inplanes = base
  for i, count in enumerate(layers):
    planes, stride = base * 2**i, 1 if i == 0 else 2
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
      downsample = nn.Sequential(conv1x1(inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
    modules.append(block(inplanes, planes, stride, downsample))
    inplanes = planes * block.expansion
    modules += [block(inplanes, planes) for _ in range(1, count)]
  encoder = nn.Sequential(*modules, nn.AdaptiveAvgPool2d(1), nn.Flatten())
  head = nn.Sequential(nn.Linear(inplanes, 512, bias=False), nn.BatchNorm1d(512),
                       nn.ReLU(inplace=True), nn.Linear(512, 128))
  return nn.Sequential(encoder, head)


def worker_torch(sizes: dict) -> dict:
  import numpy as np
  import torch

  import loss_bench
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  out = {"device": torch.cuda.get_device_name() if cuda else "cpu",
         "version": torch.__version__, "loss": {}, "step": {}}
  estimator, tau_plus, beta = loss_bench.LOSSES["hcl"]
  for batch in sizes["loss_batches"]:
    mask = loss_bench._negative_mask(batch).to(device)
    z1, z2 = (torch.from_numpy(z).to(device).requires_grad_(True)
              for z in loss_bench._inputs(batch, loss_bench.DIM))

    def call():
      z1.grad = z2.grad = None
      value = loss_bench._torch_criterion(z1, z2, mask, tau_plus, batch, beta, estimator,
                                          loss_bench.TEMPERATURE)
      value.backward()
      sync()
      return value

    if cuda:
      torch.cuda.reset_peak_memory_stats()
    value = call()
    seconds = _median_time(call, 3, sizes["rounds"])
    out["loss"][batch] = {"value": float(value.detach()), "seconds": seconds,
                          "memory": torch.cuda.max_memory_allocated() if cuda else None}
    del mask, z1, z2

  net = _torch_model(sizes["model"], sizes["width"]).to(device)
  net = net.to(memory_format=torch.channels_last)
  opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-6)
  rng = np.random.default_rng(0)
  shape = (sizes["batch"], 3, sizes["image_size"], sizes["image_size"])
  views = [torch.from_numpy(rng.normal(size=shape).astype(np.float32)).to(device)
           .contiguous(memory_format=torch.channels_last) for _ in range(2)]
  mask = loss_bench._negative_mask(sizes["batch"]).to(device)
  net.train()

  def step():
    # AMP as the reference's users run it: bf16 autocast on CUDA (no scaler
    # needed for bf16); the published code runs one forward pass per view.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
      z1, z2 = net(views[0]), net(views[1])
    loss = loss_bench._torch_criterion(z1.float(), z2.float(), mask, tau_plus, sizes["batch"],
                                       beta, estimator, loss_bench.TEMPERATURE)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  step()
  step()   # warm-up (cuDNN autotuning on the first calls)
  seconds = _median_time(step, sizes["steps"], sizes["rounds"])
  out["step"]["amp_bf16_channels_last" if cuda else "float32_channels_last"] = {
      "seconds": seconds, "memory": torch.cuda.max_memory_allocated() if cuda else None}
  return out


def worker_input(sizes: dict) -> dict:
  import input_bench
  cores = len(os.sched_getaffinity(0))
  data_dir = tempfile.mkdtemp(prefix="hcl_jax_accel_input_")
  args = argparse.Namespace(datasets=list(sizes["datasets"]), cores=[cores], variants=["full"],
                            batches=sizes["input_batches"],
                            batch_size=sizes["input_batch_size"], rounds=1, data_dir=data_dir)
  return {"cores": cores, "rows": input_bench.run_table(args)}


WORKERS = {"jax": worker_jax, "torch": worker_torch, "input": worker_input}


# ----------------------------------------------------------------- driver --

def _run(kind: str, sizes: dict, timeout: float) -> dict:
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  cmd = [sys.executable, os.path.abspath(__file__), "--_worker", kind, json.dumps(sizes)]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=_ROOT, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  for line in done.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
  return {"error": f"rc {done.returncode}: {tail}"}


def _ms(seconds) -> str:
  return "-" if seconds is None else f"{1e3 * seconds:.2f}"


def _mib(nbytes) -> str:
  return "-" if nbytes is None else f"{nbytes / MIB:.1f}"


def _pct(value) -> str:
  return "-" if value is None else f"{100 * value:.1f}%"


def table(results: dict, sizes: dict) -> list[str]:
  """The check's markdown table (one row per measurement)."""
  ours, ref, data = results["jax"], results["torch"], results["input"]
  lines = [f"device: {ours.get('device', '?')} x {ours.get('devices', '?')} "
           f"(jax {ours.get('platform', '?')}); torch {ref.get('version', '?')} on "
           f"{ref.get('device', '?')}",
           "| what | ours | reference | ours / reference time | peak memory MiB (ours / ref) "
           "| MFU (ours / ref) | check |",
           "|---|---|---|---|---|---|---|"]
  for kind, res in results.items():
    if "error" in res:
      lines.append(f"| {kind} | failed: {res['error']} | | | | | FAIL |")
  for batch in sizes["loss_batches"]:
    a, b = ours.get("loss", {}).get(str(batch)), ref.get("loss", {}).get(str(batch))
    if not a or not b:
      continue
    # 1e-3: JAX runs float32 matmuls as TF32 on NVIDIA GPUs by default, torch does not.
    same = abs(a["value"] - b["value"]) <= 1e-3 * max(1.0, abs(b["value"]))
    lines.append(
        f"| HCL loss fwd+bwd B={batch} | {_ms(a['seconds'])} ms (loss {a['value']:.5f}) | "
        f"{_ms(b['seconds'])} ms (loss {b['value']:.5f}) | {a['seconds'] / b['seconds']:.3g} | "
        f"{_mib(a['memory'])} / {_mib(b['memory'])} | | {'ok' if same else 'LOSS DIFFERS'} |")
  ref_steps = ref.get("step", {})
  ref_name, ref_step = next(iter(ref_steps.items()), (None, None))
  images = 2 * sizes["batch"]
  for name, a in ours.get("step", {}).items():
    ref_mfu = None
    if ref_step and a["flops"] and a["peak_per_chip"]:
      ref_mfu = a["flops"] / ref_step["seconds"] / (a["peak_per_chip"] * ours["devices"])
    ratio = f"{a['seconds'] / ref_step['seconds']:.3g}" if ref_step else "-"
    lines.append(
        f"| {sizes['model']} train step, batch {sizes['batch']} x 2 views, "
        f"{sizes['image_size']} px: ours {name} vs torch {ref_name} | "
        f"{_ms(a['seconds'])} ms ({images / a['seconds']:.0f} img/s; compiled in "
        f"{a['compile_s']:.0f} s; {a['flops']:.3g} FLOP) | "
        + (f"{_ms(ref_step['seconds'])} ms ({images / ref_step['seconds']:.0f} img/s)"
           if ref_step else "-")
        + f" | {ratio} | {_mib(a['memory'])} / {_mib(ref_step and ref_step['memory'])} | "
        f"{_pct(a['mfu'])} / {_pct(ref_mfu)} | |")
  for row in data.get("rows", []):
    lines.append(f"| input pipeline {row['dataset']}, two views, {row['cores']} host cores | "
                 f"{row['wall']:.0f} img/s ({row['wall_per_core']:.0f} per core) | | | | | |")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes: checks the plumbing on a CPU in about a minute")
  parser.add_argument("--timeout", type=float, default=None,
                      help="seconds per part (default 300)")
  parser.add_argument("--_worker", nargs=2, default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._worker:
    kind, sizes = args._worker
    print("RESULT " + json.dumps(WORKERS[kind](json.loads(sizes))), flush=True)
    return
  sizes = SMOKE if args.smoke else FULL
  timeout = args.timeout or 300
  start = time.perf_counter()
  results = {kind: _run(kind, dict(sizes), timeout) for kind in WORKERS}
  print("\n".join(table(results, sizes)))
  print(f"\n({'smoke' if args.smoke else 'full'} check, {time.perf_counter() - start:.0f} s)")
  if any("error" in r for r in results.values()):
    sys.exit(1)


if __name__ == "__main__":
  main()
