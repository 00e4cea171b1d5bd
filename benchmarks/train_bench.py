"""Train-step throughput: our jitted JAX step vs a PyTorch eager step, side by side.

ResNet-18 with the CIFAR stem at full width, projection head 512 -> 128, HCL
loss, Adam; a global batch of B images per view (2B images through the
network per step; img/s counts those 2B), 32x32. The runs alternate in one
process (rounds of a few steps each), so a machine shared with other jobs
affects them alike; the ratio is the figure to read (PyTorch's OpenMP threads
suffer more than XLA from an oversubscribed CPU, so ratios measured under
load flatter us).

  python benchmarks/train_bench.py --devices 1,2     # B = 256, the issue's setting
  python benchmarks/train_bench.py --batch 32 --steps 2 --rounds 2   # quick
  python benchmarks/train_bench.py --variants ours,xla_default,no_ynn  # XLA options

Measured (2-core AMD EPYC, AVX2, load ~2; B = 256; two runs of 2 rounds):
  ours on 2 devices (one per core) 16.6-16.7 s/step (30.7-30.9 img/s, 62% of
  the 166 GFLOP/s peak), torch 2.13 eager 16.1-17.0 s/step (30.1-31.9
  img/s): ratio 0.96-1.03 (per round 0.96-1.03). Ours on 1 device: 0.86-0.94.
  This jaxlib's default CPU options (YNNPACK convolutions): 0.43-0.47 of torch.

XLA flags: ``--xla_flags="..."`` (set before jax is imported).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch", type=int, default=256, help="images per view (global)")
parser.add_argument("--image_size", type=int, default=32)
parser.add_argument("--steps", type=int, default=2, help="timed steps per framework per round")
parser.add_argument("--rounds", type=int, default=2)
parser.add_argument("--devices", default="1",
                    help="comma list: XLA CPU devices to shard our step over, each a variant")
parser.add_argument("--bf16", action="store_true", help="our step in mixed precision")
parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
parser.add_argument("--xla_flags", default="", help="extra XLA_FLAGS")
parser.add_argument("--no_torch", action="store_true")
parser.add_argument("--variants", default="ours",
                    help="comma list of our step's XLA option sets: ours,xla_default,no_ynn")
parser.add_argument("--torch_channels_last", action="store_true")
args = parser.parse_args()

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    f"--xla_force_host_platform_device_count={max(int(d) for d in args.devices.split(','))}", args.xla_flags])
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs.digits import get_config  # noqa: E402
from hcl_jax.distributed import mesh as mesh_lib  # noqa: E402
from hcl_jax import models  # noqa: E402
from hcl_jax.train import optim  # noqa: E402
from hcl_jax.train import step as ts  # noqa: E402


# ----------------------------------------------------------------- FLOPs, peak
def resnet18_cifar_forward_flops(size: int, width: float, head_hidden=512, head_out=128) -> float:
  """FLOPs (2 per multiply-add) of one image's forward pass, convs + dense."""
  base = int(round(64 * width))
  macs, h, cin = size * size * 9 * 3 * base, size, base          # stem
  for stage in range(4):
    cout = base * 2**stage
    for block in range(2):
      stride = 2 if stage > 0 and block == 0 else 1
      h_out = h // stride
      macs += h_out * h_out * 9 * cin * cout + h_out * h_out * 9 * cout * cout
      if stride != 1 or cin != cout:
        macs += h_out * h_out * cin * cout                        # 1x1 projection
      h, cin = h_out, cout
  macs += cin * head_hidden + head_hidden * head_out
  return 2.0 * macs


def cpu_peak_flops() -> tuple[float, float, int]:
  """(peak from /proc/cpuinfo MHz, measured fp32 matmul FLOP/s, cores)."""
  cores = os.cpu_count() or 1
  mhz = 0.0
  try:
    with open("/proc/cpuinfo") as f:
      mhz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", f.read()))
  except (OSError, ValueError):
    pass
  # AVX2 + FMA: 2 FMA units x 8 fp32 lanes x 2 flops = 32 flop/cycle/core.
  peak = cores * mhz * 1e6 * 32
  a = jnp.ones((2048, 2048), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return peak, 2 * 2048**3 / best, cores


# ----------------------------------------------------------------------- ours
VARIANTS = {
    # name: compiler_options for make_train_step (None: the library default).
    "ours": None,
    "xla_default": {},
    "no_ynn": {"xla_cpu_experimental_ynn_fusion_type": ""},   # Eigen convs and dots
}


def build_jax(batch_np, compiler_options, num_devices):
  config = get_config()
  config.batch_size = args.batch
  config.model.name, config.model.stem = "resnet18", "cifar"
  config.model.width_multiplier = args.width
  config.mixed_precision = args.bf16
  mesh = mesh_lib.make_mesh(jax.devices()[:num_devices])
  model = models.create_model(config)
  state = ts.create_train_state(model, optim.make_optimizer(config, 100), jax.random.key(0), mesh,
                                (args.image_size, args.image_size, 3))
  step = ts.make_train_step(config, mesh, 100, model, compiler_options=compiler_options)
  batch = jax.device_put({k: jnp.asarray(v) for k, v in batch_np.items()},
                         mesh_lib.batch_sharding(mesh))
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", float("nan"))) * num_devices if cost else float("nan")
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    return float(metrics["loss"])

  return run, compile_s, xla_flops


# ---------------------------------------------------------------------- torch
def build_torch(batch_np):
  import torch
  import torch.nn as nn
  import torch.nn.functional as F
  torch.set_num_threads(os.cpu_count() or 1)
  base = int(round(64 * args.width))

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.b1 = nn.BatchNorm2d(cout)
      self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.b2 = nn.BatchNorm2d(cout)
      self.proj = None
      if stride != 1 or cin != cout:
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      y = F.relu(self.b1(self.c1(x)))
      y = self.b2(self.c2(y))
      return F.relu(y + (x if self.proj is None else self.proj(x)))

  class Net(nn.Module):   # the published model: torchvision ResNet-18, CIFAR stem
    def __init__(self):
      super().__init__()
      layers = [nn.Conv2d(3, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU()]
      cin = base
      for stage in range(4):
        cout = base * 2**stage
        for block in range(2):
          layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
          cin = cout
      self.f = nn.Sequential(*layers)
      self.g = nn.Sequential(nn.Linear(cin, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
                             nn.Linear(512, 128))

    def forward(self, x):
      h = torch.flatten(F.adaptive_avg_pool2d(self.f(x), 1), 1)
      return F.normalize(h, dim=-1), F.normalize(self.g(h), dim=-1)

  def hcl(z1, z2, t=0.5, tau=0.1, beta=1.0):
    b = z1.shape[0]
    out = torch.cat([z1, z2])
    neg = torch.exp(out @ out.t() / t)
    mask = torch.ones_like(neg, dtype=torch.bool)
    idx = torch.arange(2 * b)
    mask[idx, idx] = False
    mask[idx, (idx + b) % (2 * b)] = False
    neg = neg.masked_select(mask).view(2 * b, -1)
    pos = torch.exp((z1 * z2).sum(-1) / t)
    pos = torch.cat([pos, pos])
    n = 2 * b - 2
    imp = (beta * neg.log()).exp()
    reweight = (imp * neg).sum(-1) / imp.mean(-1)
    ng = torch.clamp((-tau * n * pos + reweight) / (1 - tau), min=n * np.e**(-1 / t))
    return (-torch.log(pos / (pos + ng))).mean()

  net = Net()
  fmt = torch.channels_last if args.torch_channels_last else torch.contiguous_format
  net = net.to(memory_format=fmt)
  opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-6)
  views = [torch.from_numpy(batch_np[k].transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
           for k in ("view1", "view2")]
  net.train()

  def run():
    _, z1 = net(views[0])     # the published code: one forward pass per view
    _, z2 = net(views[1])
    loss = hcl(z1, z2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())

  return run, torch.__version__


def timed(run, steps):
  t = time.perf_counter()
  for _ in range(steps):
    run()
  return (time.perf_counter() - t) / steps


def main():
  rng = np.random.default_rng(0)
  shape = (args.batch, args.image_size, args.image_size, 3)
  batch_np = {k: rng.normal(size=shape).astype(np.float32) for k in ("view1", "view2")}
  peak, measured, cores = cpu_peak_flops()
  fwd = resnet18_cifar_forward_flops(args.image_size, args.width)
  hand_flops = 3 * fwd * 2 * args.batch        # forward + backward (2x) on 2B images
  print(f"jax {jax.__version__}, XLA CPU devices {args.devices}, bf16={args.bf16}, "
        f"XLA_FLAGS='{os.environ['XLA_FLAGS'].strip()}'")
  print(f"CPU: {cores} cores; peak from cpuinfo {peak / 1e9:.1f} GFLOP/s (32 flop/cycle/core), "
        f"measured 2048^2 fp32 matmul {measured / 1e9:.1f} GFLOP/s")

  runs = {}
  for variant in args.variants.split(","):
    for num_devices in (int(d) for d in args.devices.split(",")):
      name = f"{variant}@{num_devices}dev"
      runs[name], compile_s, xla_flops = build_jax(batch_np, VARIANTS[variant], num_devices)
      print(f"jax[{name}] compile {compile_s:.1f} s; FLOPs/step: XLA cost analysis "
            f"{xla_flops / 1e12:.3f} T, by hand (3 x forward) {hand_flops / 1e12:.3f} T")
  if not args.no_torch:
    torch_run, torch_version = build_torch(batch_np)
    runs["torch"] = torch_run
    print(f"torch {torch_version} eager, {os.cpu_count()} threads")
  for run in runs.values():   # warm up
    run()

  times = {name: [] for name in runs}
  for r in range(args.rounds):
    for name, run in runs.items():   # alternate: shared-machine load hits all alike
      times[name].append(timed(run, args.steps))
    line = ", ".join(f"{n} {t[-1]:.2f}" for n, t in times.items())
    print(f"round {r} (s/step): {line}; load average {os.getloadavg()[0]:.1f}", flush=True)

  for name, seconds in times.items():
    best = min(seconds)
    images = 2 * args.batch / best
    print(f"{name:14s} best {best:.2f} s/step: {images:.1f} img/s ({images / 2:.1f} pairs/s), "
          f"{hand_flops / best / 1e9:.1f} GFLOP/s = {hand_flops / best / peak:.0%} of "
          f"cpuinfo peak, {hand_flops / best / measured:.0%} of measured matmul")
  if "torch" in times:
    for name in times:
      if name != "torch":
        per_round = [round(t / j, 2) for j, t in zip(times[name], times["torch"])]
        print(f"speed ratio {name}/torch: best/best {min(times['torch']) / min(times[name]):.2f}, "
              f"per round {per_round}")


if __name__ == "__main__":
  main()
