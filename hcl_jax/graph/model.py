"""InfoGraph's GIN encoder and its two FF heads (published gin.py, model.py), flax linen.

Encoder: ``num_layers`` GIN layers x <- BN(ReLU(GINConv(MLP)(x))), MLP =
Dense-ReLU-Dense, GINConv with eps = 0 (h_i = MLP(x_i + sum_{j->i} x_j),
messages summed with ``jax.ops.segment_sum``). Each layer's node outputs are
sum-pooled per graph; the graph embedding y is their concatenation
(num_layers * hidden), the node map M the concatenation of the node outputs.
Heads: FF(x) = [Dense-ReLU] x 3 (x) + Dense(x), same width. Every Dense has
Xavier-uniform weights and zero bias (``init_emb`` of the published
GcnInfomax, which re-initialises all its Linear layers, encoder included).

BatchNorm is PyTorch's BatchNorm1d over the real nodes only: batch mean and
biased variance for normalising, running mean and *unbiased* variance with
momentum 0.1 for eval mode, eps 1e-5.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hcl_jax.graph.tu_data import GraphBatch

_dense = lambda features, name=None: nn.Dense(  # noqa: E731
    features, kernel_init=nn.initializers.xavier_uniform(),
    bias_init=nn.initializers.zeros, name=name)


class MaskedBatchNorm(nn.Module):
  """torch.nn.BatchNorm1d over the rows where ``mask`` is True."""
  momentum: float = 0.1   # PyTorch convention: new = (1 - m) old + m batch
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,))
    if train:
      w = mask.astype(x.dtype)[:, None]
      n = jnp.maximum(jnp.sum(w), 1.0)
      mean = jnp.sum(w * x, axis=0) / n
      var = jnp.sum(w * jnp.square(x - mean), axis=0) / n
      if not self.is_initializing():
        unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
        ra_var.value = (1 - m) * ra_var.value + m * jax.lax.stop_gradient(unbiased)
    else:
      mean, var = ra_mean.value, ra_var.value
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class GINEncoder(nn.Module):
  hidden_dim: int = 32
  num_layers: int = 3

  @nn.compact
  def __call__(self, batch: GraphBatch, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (y [G, L*H] graph embeddings, M [N, L*H] node map)."""
    x = batch.x
    num_nodes, num_graphs = x.shape[0], batch.graph_mask.shape[0]
    node_outputs = []
    for i in range(self.num_layers):
      # Padding edges have receiver == num_nodes: segment_sum drops them.
      sent = jnp.asarray(x).at[batch.senders].get(mode="fill", fill_value=0)
      messages = jax.ops.segment_sum(sent, batch.receivers, num_nodes)
      h = x + messages
      h = _dense(self.hidden_dim, f"gin{i}_dense0")(h)
      h = _dense(self.hidden_dim, f"gin{i}_dense1")(nn.relu(h))
      x = MaskedBatchNorm(name=f"bn{i}")(nn.relu(h), batch.node_mask, train=train)
      node_outputs.append(x)
    # Padding nodes have graph id == num_graphs: dropped from every pool.
    pooled = [jax.ops.segment_sum(h, batch.node_graph, num_graphs) for h in node_outputs]
    return jnp.concatenate(pooled, axis=1), jnp.concatenate(node_outputs, axis=1)


class FF(nn.Module):
  """[Dense-ReLU] x 3 + a linear shortcut, width preserved (model.py FF)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    h = x
    for i in range(3):
      h = nn.relu(_dense(d, f"block{i}")(h))
    return h + _dense(d, "shortcut")(x)


class InfoGraph(nn.Module):
  """Encoder + local_d (on M) + global_d (on y); no prior discriminator."""
  hidden_dim: int = 32
  num_layers: int = 3

  def setup(self):
    self.encoder = GINEncoder(self.hidden_dim, self.num_layers)
    self.local_d = FF()
    self.global_d = FF()

  def __call__(self, batch: GraphBatch, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (l [N, D] local codes, g [G, D] global codes)."""
    y, m = self.encoder(batch, train=train)
    return self.local_d(m), self.global_d(y)

  def embed(self, batch: GraphBatch) -> jax.Array:
    """Graph embeddings y in eval mode (what the SVC sees)."""
    return self.encoder(batch, train=False)[0]


def init_variables(model: InfoGraph, batch: GraphBatch, rng: jax.Array) -> dict[str, Any]:
  # Jitted: op-by-op initialisation is slower than compiling it.
  return jax.jit(lambda rng, batch: model.init(rng, batch, train=True))(rng, batch)
