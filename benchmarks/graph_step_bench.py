"""InfoGraph training on MUTAG, ours (JAX) vs the published PyTorch code: speed.

One training step (forward + backward + Adam) on a batch of 128 MUTAG
graphs, or with ``--epoch`` one epoch (all 188 graphs: 128 + 60): our jitted
JAX step vs the same step written with PyTorch Geometric the way the
published HCL graph/ code writes it, side by side in one process.

The PyTorch side (written here from the published gin.py, model.py, losses.py
and gan_losses.py, not copied): GINConv(Sequential(Linear, ReLU, Linear)) +
ReLU + BatchNorm1d x 3, global_add_pool, FF heads, ``local_global_loss_``
with its Python loop over the nodes building pos_mask / neg_mask on every
call, measure JSD_hard, Adam. Both sides start from the same weights (ours
copied into torch) on the same batch, and the first step's losses are printed
side by side as a check that the two compute the same thing.

  python benchmarks/graph_step_bench.py --threads=1             # one step, beta 1
  python benchmarks/graph_step_bench.py --threads=1 --epoch     # one epoch
  python benchmarks/graph_step_bench.py --beta 0 --steps 10 --rounds 2
  python benchmarks/graph_step_bench.py --grad-check --beta 10  # float32 vs float64 gradients

``--epoch`` loops as the trainers do: ours over the run's batches
(``make_batches(shapes="two")``: the last, 60-graph batch has its own
compiled shape) and, for comparison, with the last batch padded to a full
128-graph one (``shapes="one"``, what hcl_jax.graph.train did before); the
published code through its DataLoader (collating every batch every epoch)
and, stricter, the same torch steps on batches collated once. A float(loss)
per step on both sides, as both trainers log it.

On a shared 2-core machine torch's 2-thread OpenMP pool slows down a lot when
another process holds a core (benchmarks/README.md): there ``--threads=1``
(both pinned to one core, torch on one thread) gives the fairer figure.
Rounds alternate between the variants so a shared machine's load hits all
alike; read the ratios.

Measured 2026-12-06 (2-core AMD EPYC, shared with other jobs, load 2.5-3.6;
torch 2.14.1 CPU, torch_geometric 2.8.1, jax 0.10.2), --threads=1, ms,
median of 5 rounds:
  --epoch --steps 40 --rounds 5 (beta 1), per epoch: ours 17.7; before (last
    batch padded to 128 graphs) 27.5; published 68.5 (3.8x ours; 2.5x before),
    its steps on batches collated once 62.8 (3.5x; 2.3x before).
  --epoch --beta 0, same: ours 16.1; before 26.6; published 69.3 (3.9x),
    collated once 63.4 (3.7x).
  --rounds 5 (beta 1), per 128-graph step: ours 11.3, published 46.0 (3.9x),
    vectorised masks (not published) 30.6 (2.7x).
Losses agree to 4.7e-6 at the first step, eval embeddings at initialisation
to 2.6e-7; after 3 Adam steps the embeddings differ by ~1e-2 relative
(Adam's first steps are ~lr * sign(g), so float rounding in near-zero
gradients moves weights by up to 2 lr), the losses by <= 1.2e-4. The last
batch gives the same loss in its own shape and padded.
--grad-check (first step, 128 graphs; worst tensor of max |g - g64| / max
|g64| against the published code in float64): published float32 2.3e-3
(beta 0), 1.7e-3 (beta 1), 6.3e-4 (beta 10); ours 1.5e-5, 1.7e-5, 2.4e-5.
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
parser.add_argument("--epoch", action="store_true",
                    help="time whole MUTAG epochs (a batch of 128 graphs and the last of 60) "
                    "instead of one 128-graph step")
parser.add_argument("--grad-check", action="store_true",
                    help="no timing: the first step's gradients of ours (float32) and of the "
                    "published code in float32, each against the published code in float64 "
                    "(after --steps of our training on the batch with --grad-check-trained)")
parser.add_argument("--grad-check-trained", action="store_true",
                    help="--grad-check from the weights after --steps steps, not the init")
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


def torch_tree(net: TorchInfoGraph, layers: int, get=lambda p: p.grad):
  """``get`` of every torch parameter, laid out as our flax params (kernel = weight.T)."""
  arr = lambda t: get(t).detach().double().numpy()  # noqa: E731
  linear = lambda m: {"kernel": arr(m.weight).T, "bias": arr(m.bias)}  # noqa: E731
  enc = net.encoder
  tree = {"encoder": {}}
  for i in range(layers):
    tree["encoder"][f"gin{i}_dense0"] = linear(enc.convs[i].nn[0])
    tree["encoder"][f"gin{i}_dense1"] = linear(enc.convs[i].nn[2])
    tree["encoder"][f"bn{i}"] = {"scale": arr(enc.bns[i].weight), "bias": arr(enc.bns[i].bias)}
  for name in ("local_d", "global_d"):
    head = getattr(net, name)
    tree[name] = {f"block{i}": linear(head.block[k]) for i, k in enumerate((0, 2, 4))}
    tree[name]["shortcut"] = linear(head.shortcut)
  return tree


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


def grad_check():
  """Gradients of the first step from the same weights: ours and the published
  code's in float32, each against the published code run in float64 (which
  matches ours in float64 to ~1e-11, issue 26). Per tensor max |g - g64| /
  max |g64|; the worst tensor is printed."""
  from hcl_jax.graph import losses

  global state
  if args.grad_check_trained:
    for _ in range(args.steps):
      state, _ = step(state, device_batch, beta_arg)
    print(f"from the weights after {args.steps} of our steps on this batch")
  params = jax.device_get(state["params"])

  def torch_grads(dtype):
    ref = TorchInfoGraph(dataset.num_features)
    copy_weights(params, ref, 3)
    ref = ref.to(dtype)
    loss = ref(pyg_batch.x.to(dtype), pyg_batch.edge_index, pyg_batch.batch, args.beta)
    loss.backward()
    return float(loss.detach()), torch_tree(ref, 3)

  def ours_loss(p):
    (l, g), _ = model.apply({"params": p, "batch_stats": state["batch_stats"]}, device_batch,
                            train=True, mutable=["batch_stats"])
    beta = 0.0 if args.beta == 0 else jnp.float32(args.beta)
    return losses.local_global_loss(l, g, device_batch.node_graph, device_batch.node_mask,
                                    device_batch.graph_mask, beta=beta)

  loss64, g64 = torch_grads(torch.float64)
  loss32, g32 = torch_grads(torch.float32)
  ours_l, ours_g = jax.jit(jax.value_and_grad(ours_loss))(params)
  print(f"beta {args.beta:g}: loss float64 {loss64:.9f}, torch float32 {loss32:.9f}, "
        f"ours float32 {float(ours_l):.9f}")
  for name, grads in (("published float32", g32), ("ours float32", jax.device_get(ours_g))):
    errors = jax.tree.map(lambda g, r: float(np.abs(np.asarray(g, np.float64) - r).max()
                                             / max(np.abs(r).max(), 1e-30)), grads, g64)
    path, worst = max(jax.tree_util.tree_leaves_with_path(errors), key=lambda kv: kv[1])
    print(f"{name} gradients vs float64: worst tensor {jax.tree_util.keystr(path)} "
          f"{worst:.1e}, median over tensors {np.median(jax.tree.leaves(errors)):.1e}")


if args.grad_check:
  grad_check()
  sys.exit(0)
compare_embeddings("at initialisation")
# Same weights, same batch: the losses of the first steps should agree (the
# second and third also check gradients, BatchNorm and Adam).
for i in range(3):
  theirs = torch_step()
  ours = float(ours_step())
  print(f"step {i + 1} loss: ours {ours:.6f}  torch/PyG {theirs:.6f}  "
        f"(relative difference {abs(ours - theirs) / abs(theirs):.1e})")
compare_embeddings("after 3 steps")



def time_steps():
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
  print_table(f"step (batch of {args.batch} MUTAG graphs)", "step", times, OURS)


def print_table(what, unit, times, ours):
  print()
  print(f"| {what} | ms / {unit} (median of rounds) | per round (ms) "
        "| ours faster by (median of per-round ratios) |")
  print("|---|---|---|---|")
  for name, ts in times.items():
    ratio = statistics.median(b / a for a, b in zip(times[ours], ts))
    print(f"| {name} | {statistics.median(ts) * 1e3:.2f} | "
          f"{', '.join(f'{t * 1e3:.2f}' for t in ts)} | {ratio:.2f}x |")


def time_epochs():
  """Epochs over all 188 MUTAG graphs in the run's fixed order (seed 0), as the
  trainers loop: ours over ``make_batches(shapes="two")`` (the last batch its
  own shape) and ``shapes="one"`` (the last batch padded to a full one, the
  previous behaviour), a float(loss) per step as hcl_jax.graph.train logs;
  torch as deepinfomax.py: a DataLoader over the shuffled dataset (collating
  each batch every epoch), loss.item() per step; and the same torch steps on
  batches collated once (a stricter comparison)."""
  from torch_geometric.loader import DataLoader

  full_order = tu_data.shuffled_order(len(dataset), 0)
  data = [Data(x=torch.tensor(dataset.node_features[i]),
               edge_index=torch.tensor(dataset.edges[i].astype(np.int64))) for i in full_order]
  loader = DataLoader(data, batch_size=args.batch, shuffle=False)
  collated = list(loader)
  variants = {name: tu_data.make_batches(dataset, full_order, args.batch, shapes=shapes)
              for name, shapes in (("two", "two"), ("one", "one"))}
  print(f"epoch: {len(data)} graphs in batches of {[b.num_graphs for b in variants['two']]}; "
        "shapes (nodes, edges, graph slots): "
        + "; ".join(f"{name}: " + ", ".join(f"{b.x.shape[0]}/{b.senders.shape[0]}/"
                                            f"{b.graph_mask.shape[0]}" for b in batches)
                    for name, batches in variants.items()))
  tx = optax.adam(1e-3)
  states = {name: train_lib.create_state(model, tx, batches[0], seed=0)
            for name, batches in variants.items()}
  device = {name: [jax.device_put(b) for b in batches] for name, batches in variants.items()}
  ep_net = TorchInfoGraph(dataset.num_features)
  copy_weights(jax.device_get(states["two"]["params"]), ep_net, 3)
  ep_opt = torch.optim.Adam(ep_net.parameters(), lr=1e-3)

  def ours_epoch(name):
    losses = []
    for b in device[name]:
      states[name], loss = step(states[name], b, beta_arg)
      losses.append(float(loss))
    return losses

  def torch_epoch(batches):
    losses = []
    for b in batches:
      ep_opt.zero_grad()
      loss = ep_net(b.x, b.edge_index, b.batch, args.beta)
      loss.backward()
      ep_opt.step()
      losses.append(loss.item())
    return losses

  # From the same weights: the first epoch's losses, batch by batch (the last
  # batch compares its own shape with its padding to a full batch).
  first = {"ours, last batch its own shape": ours_epoch("two"),
           "ours, last batch padded (before)": ours_epoch("one"),
           "published": torch_epoch(loader)}
  for name, values in first.items():
    print(f"epoch 1 losses, {name}: {', '.join(f'{v:.6f}' for v in values)}")
  last = [v[-1] for v in first.values()]
  print(f"last batch: |own shape - padded| = {abs(last[0] - last[1]):.1e}, "
        f"|own shape - published| / |published| = {abs(last[0] - last[2]) / abs(last[2]):.1e}")

  OURS = "ours, last batch its own shape (JAX, jit)"
  names = {OURS: lambda: ours_epoch("two"),
           "ours, last batch padded to 128 graphs (before)": lambda: ours_epoch("one"),
           "published (PyTorch Geometric; DataLoader collating every epoch)":
               lambda: torch_epoch(loader),
           "published steps, batches collated once": lambda: torch_epoch(collated)}
  for fn in names.values():
    fn()   # warm
  epochs = max(1, args.steps // len(collated))
  times = {name: [] for name in names}
  for _ in range(args.rounds):
    for name, fn in names.items():
      t = time.perf_counter()
      for _ in range(epochs):
        fn()
      times[name].append((time.perf_counter() - t) / epochs)
  print_table(f"epoch ({len(data)} MUTAG graphs, {len(collated)} batches; {epochs} epochs "
              "per round)", "epoch", times, OURS)


if args.epoch:
  time_epochs()
else:
  time_steps()
