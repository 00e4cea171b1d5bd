"""One InfoGraph training step (forward + backward + Adam) on a batch of 128 MUTAG
graphs: our jitted JAX step vs the same step written with PyTorch Geometric the
way the published HCL graph/ code writes it, side by side in one process.

The PyTorch side (written here from the published gin.py, model.py, losses.py
and gan_losses.py, not copied): GINConv(Sequential(Linear, ReLU, Linear)) +
ReLU + BatchNorm1d x 3, global_add_pool, FF heads, ``local_global_loss_``
with its Python loop over the nodes building pos_mask / neg_mask on every
call, measure JSD_hard, Adam. Both sides start from the same weights (ours
copied into torch) on the same batch, and the first step's losses are printed
side by side as a check that the two compute the same thing.

  python benchmarks/graph_step_bench.py               # beta 1, 30 steps x 3 rounds
  python benchmarks/graph_step_bench.py --beta 0 --steps 10 --rounds 2
  python benchmarks/graph_step_bench.py --threads=1   # both on one core

On a shared 2-core machine torch's 2-thread OpenMP pool slows down a lot when
another process holds a core (benchmarks/README.md): there ``--threads=1``
gives the fairer figure.

Rounds alternate between the frameworks so a shared machine's load hits both
alike; read the ratio.

Measured (2-core AMD EPYC, AVX2, shared, load 14-20; torch 2.14.1 CPU build
as installed in the venv, torch_geometric 2.8.1, jax 0.10.2), ms per step,
median of 3 rounds of 20 steps:
  --threads=1 --beta 1: ours 24.3, published 90.0 (3.7x), vectorised masks 67.1 (2.8x)
  --threads=1 --beta 0: ours 23.5, published 92.8 (3.9x), vectorised masks 61.3 (2.6x)
  all cores, --beta 1:  ours 27.6, published 1554 (64x), vectorised masks 804 (61x):
                        torch's 2-thread pool under load, not a fair figure.
Losses agree to 1.5e-7 (2 threads) / 4.7e-6 (1 thread) at the first step, eval
embeddings at initialisation to 2.6e-7; after 3 Adam steps the embeddings
differ by ~1e-2 relative (Adam's first steps are ~lr * sign(g), so float
rounding in near-zero gradients moves weights by up to 2 lr), the losses by <= 1.2e-4.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

_threads = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--threads=")), 0)
if _threads:   # before jax / torch start their thread pools
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:_threads]))

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GINConv, global_add_pool

from hcl_jax.graph import model as model_lib
from hcl_jax.graph import train as train_lib
from hcl_jax.graph import tu_data

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--beta", type=float, default=1.0)
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--steps", type=int, default=30, help="timed steps per framework per round")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--threads", type=int, default=0,
                    help="--threads=N: pin the process to N cores, torch to N threads "
                    "(0: all cores, default threads)")
args = parser.parse_args()
if args.threads:
  torch.set_num_threads(args.threads)

TAU = 0.5
LOG2 = math.log(2.0)


# ---------------------------------------------------------------- PyTorch side
class TorchEncoder(torch.nn.Module):
  def __init__(self, num_features, dim, layers):
    super().__init__()
    self.convs = torch.nn.ModuleList()
    self.bns = torch.nn.ModuleList()
    for i in range(layers):
      mlp = torch.nn.Sequential(torch.nn.Linear(num_features if i == 0 else dim, dim),
                                torch.nn.ReLU(), torch.nn.Linear(dim, dim))
      self.convs.append(GINConv(mlp))
      self.bns.append(torch.nn.BatchNorm1d(dim))

  def forward(self, x, edge_index, batch):
    xs = []
    for conv, bn in zip(self.convs, self.bns):
      x = bn(torch.nn.functional.relu(conv(x, edge_index)))
      xs.append(x)
    return torch.cat([global_add_pool(h, batch) for h in xs], 1), torch.cat(xs, 1)


class TorchFF(torch.nn.Module):
  def __init__(self, d):
    super().__init__()
    self.block = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(),
                                     torch.nn.Linear(d, d), torch.nn.ReLU(),
                                     torch.nn.Linear(d, d), torch.nn.ReLU())
    self.shortcut = torch.nn.Linear(d, d)

  def forward(self, x):
    return self.block(x) + self.shortcut(x)


def torch_loss(l, g, batch, beta, vectorised_masks=False):
  """local_global_loss_ with measure JSD_hard, Python-loop masks as published
  (``vectorised_masks``: one one_hot instead, not the published code)."""
  num_graphs, num_nodes = g.shape[0], l.shape[0]
  if vectorised_masks:
    pos_mask = torch.nn.functional.one_hot(batch, num_graphs).float()
    neg_mask = 1.0 - pos_mask
  else:
    pos_mask = torch.zeros((num_nodes, num_graphs))
    neg_mask = torch.ones((num_nodes, num_graphs))
    for node, graph in enumerate(batch):
      pos_mask[node][graph] = 1.0
      neg_mask[node][graph] = 0.0
  res = torch.mm(l, g.t())
  p = res * pos_mask
  sp = torch.nn.functional.softplus
  e_pos = (LOG2 - sp(-p) - TAU / (1 - TAU) * (sp(-p) + p)).sum() / num_nodes
  q = res * neg_mask
  if beta == 0:
    eq = (sp(-q) + q - LOG2) / (1 - TAU)
  else:
    w = (beta * (-2 * q / max(q.max(), q.min().abs()))).exp()
    w = w / w.mean(dim=1).view(-1, 1)
    eq = w * (sp(-q) + q) / (1 - TAU) - LOG2
  e_neg = eq.sum() / (num_nodes * (num_graphs - 1))
  return e_neg - e_pos


class TorchInfoGraph(torch.nn.Module):
  def __init__(self, num_features, dim=32, layers=3):
    super().__init__()
    self.encoder = TorchEncoder(num_features, dim, layers)
    self.local_d = TorchFF(dim * layers)
    self.global_d = TorchFF(dim * layers)

  def forward(self, x, edge_index, batch, beta, vectorised_masks=False):
    y, m = self.encoder(x, edge_index, batch)
    return torch_loss(self.local_d(m), self.global_d(y), batch, beta, vectorised_masks)


def copy_weights(params, net: TorchInfoGraph, layers: int):
  """Our flax params into the torch modules (kernel [in, out] -> weight [out, in])."""
  def linear(dst, src):
    dst.weight.data = torch.tensor(np.asarray(src["kernel"]).T.copy())
    dst.bias.data = torch.tensor(np.asarray(src["bias"]).copy())
  enc = params["encoder"]
  for i in range(layers):
    linear(net.encoder.convs[i].nn[0], enc[f"gin{i}_dense0"])
    linear(net.encoder.convs[i].nn[2], enc[f"gin{i}_dense1"])
    net.encoder.bns[i].weight.data = torch.tensor(np.asarray(enc[f"bn{i}"]["scale"]).copy())
    net.encoder.bns[i].bias.data = torch.tensor(np.asarray(enc[f"bn{i}"]["bias"]).copy())
  for name in ("local_d", "global_d"):
    head = getattr(net, name)
    for i, k in enumerate((0, 2, 4)):
      linear(head.block[k], params[name][f"block{i}"])
    linear(head.shortcut, params[name]["shortcut"])


# ---------------------------------------------------------------- the batch
dataset = tu_data.load_tu_dataset("MUTAG")
order = tu_data.shuffled_order(len(dataset), 0)[:args.batch]
ours_batch = tu_data.pad_batch(dataset, list(order), args.batch)
pyg_batch = Batch.from_data_list([
    Data(x=torch.tensor(dataset.node_features[i]),
         edge_index=torch.tensor(dataset.edges[i].astype(np.int64))) for i in order])
print(f"batch: {ours_batch.num_graphs} graphs, {ours_batch.num_nodes} nodes "
      f"(padded to {ours_batch.x.shape[0]}), {int(pyg_batch.edge_index.shape[1])} edges "
      f"(padded to {ours_batch.senders.shape[0]}); beta {args.beta:g}; "
      f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}")

model = model_lib.InfoGraph(32, 3)
import optax  # noqa: E402

state = train_lib.create_state(model, optax.adam(1e-3), ours_batch, seed=0)
net = TorchInfoGraph(dataset.num_features)
copy_weights(jax.device_get(state["params"]), net, 3)
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
step = train_lib.make_train_step(32, 3, 1e-3, "jsd_hard", args.beta == 0, TAU, "zero")
device_batch = jax.device_put(ours_batch)
beta_arg = jnp.float32(args.beta)


def torch_step(vectorised_masks=False):
  opt.zero_grad()
  loss = net(pyg_batch.x, pyg_batch.edge_index, pyg_batch.batch, args.beta, vectorised_masks)
  loss.backward()
  opt.step()
  return float(loss.detach())


def ours_step():
  global state
  state, loss = step(state, device_batch, beta_arg)
  return loss


def compare_embeddings(when):
  """Eval-mode graph embeddings (BatchNorm running statistics) of both."""
  net.eval()
  with torch.no_grad():
    theirs_y = net.encoder(pyg_batch.x, pyg_batch.edge_index, pyg_batch.batch)[0].numpy()
  net.train()
  ours_y = np.asarray(train_lib.make_embed(32, 3)(
      {"params": state["params"], "batch_stats": state["batch_stats"]}, device_batch))
  diff = np.abs(ours_y[:len(theirs_y)] - theirs_y).max() / np.abs(theirs_y).max()
  print(f"eval-mode embeddings {when}: max |ours - torch| / max |torch| = {diff:.1e}")


compare_embeddings("at initialisation")
# Same weights, same batch: the losses of the first steps should agree (the
# second and third also check gradients, BatchNorm and Adam).
for i in range(3):
  theirs = torch_step()
  ours = float(ours_step())
  print(f"step {i + 1} loss: ours {ours:.6f}  torch/PyG {theirs:.6f}  "
        f"(relative difference {abs(ours - theirs) / abs(theirs):.1e})")
compare_embeddings("after 3 steps")
ours_step().block_until_ready()  # compiled already; warm

OURS = "ours (JAX, jit)"
PUBLISHED = "published (PyTorch Geometric, Python-loop masks)"
VECTORISED = "PyTorch Geometric, vectorised masks (not published)"
times = {OURS: [], PUBLISHED: [], VECTORISED: []}
for _ in range(args.rounds):
  t = time.perf_counter()
  for _ in range(args.steps):
    loss = ours_step()
  loss.block_until_ready()
  times[OURS].append((time.perf_counter() - t) / args.steps)
  for name, vectorised in ((PUBLISHED, False), (VECTORISED, True)):
    t = time.perf_counter()
    for _ in range(args.steps):
      torch_step(vectorised)
    times[name].append((time.perf_counter() - t) / args.steps)

print()
print("| step (batch of 128 MUTAG graphs) | ms / step (median of rounds) | per round (ms) "
      "| ours faster by (median of per-round ratios) |")
print("|---|---|---|---|")
for name, ts in times.items():
  ratio = statistics.median(b / a for a, b in zip(times[OURS], ts))
  print(f"| {name} | {statistics.median(ts) * 1e3:.2f} | "
        f"{', '.join(f'{t * 1e3:.2f}' for t in ts)} | {ratio:.1f}x |")
