"""InfoGraph's local-global objective: JSD and the published JSD_hard.

The published code (HCL graph/losses.py ``local_global_loss_`` with
cortex_DIM/functions/gan_losses.py) scores every (node, graph) pair of the
batch, s = l g^T [n_nodes, n_graphs], and splits it with masks:
P = s * pos_mask (a node's own graph), Q = s * neg_mask (every other graph).
Masked entries become 0; they are NOT removed: they still enter every sum and
every row mean below. With tau = tau+ (0.5 in every published run):

  Ep(p) = log 2 - softplus(-p) - tau / (1 - tau) * softplus(p)         (JSD_hard)
  Eq(q) = (softplus(q) - log 2) / (1 - tau)                            (beta = 0)
  Eq(q) = w(q) * softplus(q) / (1 - tau) - log 2                       (beta > 0)
  w     = exp(-2 beta Q / M) / mean_row(exp(-2 beta Q / M)),
  M     = max(max(Q), |min(Q)|) over the whole matrix

(log 2 inside the division for beta = 0, outside for beta > 0; the weight
*decreases* as q grows; gradients flow through w and M). Plain ``jsd`` is
Ep = log 2 - softplus(-p), Eq = softplus(q) - log 2.

  loss = sum(Eq(Q)) / (n_nodes (n_graphs - 1)) - sum(Ep(P)) / n_nodes.

Here the batch is padded: sums, means and M run over the real nodes x real
graphs only, so padding never changes the loss or the real gradients.
``mask_mode="remove"`` (not the published behaviour, off by default) drops
the masked entries instead: Ep over the positive pairs only, Eq, its row
means and M over the negative pairs only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MEASURES = ("jsd", "jsd_hard")
MASK_MODES = ("zero", "remove")
LOG2 = math.log(2.0)


def check_options(*, measure: str, beta: float, tau_plus: float, mask_mode: str) -> None:
  """ValueError naming the bad option (call once, outside jit)."""
  if measure not in MEASURES:
    raise ValueError(f"measure={measure!r}: expected one of {MEASURES}.")
  if mask_mode not in MASK_MODES:
    raise ValueError(f"mask_mode={mask_mode!r}: expected one of {MASK_MODES}.")
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
    raise ValueError(f"beta={beta!r}: must be a number >= 0.")
  if measure == "jsd" and beta != 0:
    raise ValueError(f"beta={beta!r}: measure 'jsd' has no hard negatives; use 'jsd_hard'.")
  if isinstance(tau_plus, bool) or not isinstance(tau_plus, (int, float)) or not 0 <= tau_plus < 1:
    raise ValueError(f"tau_plus={tau_plus!r}: must be in [0, 1).")


def local_global_loss(l: jax.Array, g: jax.Array, node_graph: jax.Array,
                      node_mask: jax.Array, graph_mask: jax.Array, *,
                      measure: str = "jsd_hard", beta: float = 0.0, tau_plus: float = 0.5,
                      mask_mode: str = "zero") -> jax.Array:
  """InfoGraph's local-global loss of one padded batch (module docstring).

  Args:
    l: [N, D] local codes (local_d of the node map), padding rows anything finite.
    g: [G, D] global codes (global_d of the graph embeddings).
    node_graph: int [N], graph slot of each node (any value on padding nodes).
    node_mask: bool [N], real nodes. graph_mask: bool [G], real graphs (>= 2).
    measure: "jsd_hard" (published HCL) or "jsd" (InfoGraph).
    beta: hardness, >= 0. A Python 0 selects the beta = 0 formula; any other
      value, a traced scalar included (one compilation for every beta > 0),
      the beta > 0 one.
    tau_plus: class prior tau+, [0, 1); published runs all use 0.5.
    mask_mode: "zero" (published: masked entries are zeros that stay in the
      sums) or "remove" (masked entries dropped).

  Returns:
    The scalar loss E_neg - E_pos (float32).
  """
  hard = measure == "jsd_hard"
  s = l @ g.T
  valid = node_mask[:, None] & graph_mask[None, :]
  pos = (node_graph[:, None] == jnp.arange(g.shape[0])[None, :]) & valid
  neg = valid & ~pos
  n_nodes = jnp.sum(node_mask).astype(s.dtype)
  n_graphs = jnp.sum(graph_mask).astype(s.dtype)
  p = jnp.where(pos, s, 0.0)
  q = jnp.where(neg, s, 0.0)
  keep_pos = valid if mask_mode == "zero" else pos
  keep_neg = valid if mask_mode == "zero" else neg

  ep = LOG2 - jax.nn.softplus(-p)
  if hard:
    ep = ep - tau_plus / (1 - tau_plus) * jax.nn.softplus(p)
  e_pos = jnp.sum(jnp.where(keep_pos, ep, 0.0)) / n_nodes

  softplus_q = jax.nn.softplus(q)
  if not hard:
    eq = softplus_q - LOG2
  elif isinstance(beta, (int, float)) and beta == 0:
    eq = (softplus_q - LOG2) / (1 - tau_plus)
  else:
    # M over the kept entries: in "zero" mode the zeros of Q are among them,
    # which is what max/min over the published whole matrix sees.
    q_max = jnp.max(jnp.where(keep_neg, q, -jnp.inf))
    q_min = jnp.min(jnp.where(keep_neg, q, jnp.inf))
    scale = jnp.where(q_max >= jnp.abs(q_min), q_max, jnp.abs(q_min))  # Python max(a, b)
    logits = jnp.where(keep_neg, -2.0 * beta * q / scale, -jnp.inf)
    # w / mean_row(w) with the row max taken out first (same value, no overflow).
    shifted = logits - jax.lax.stop_gradient(
        jnp.max(jnp.where(keep_neg, logits, -jnp.inf), axis=1, keepdims=True)
        .clip(min=-1e30))
    w = jnp.where(keep_neg, jnp.exp(shifted), 0.0)
    row_count = jnp.sum(keep_neg, axis=1, keepdims=True).astype(s.dtype)
    row_mean = jnp.sum(w, axis=1, keepdims=True) / jnp.maximum(row_count, 1.0)
    w = w / jnp.where(row_count > 0, row_mean, 1.0)
    eq = w * softplus_q / (1 - tau_plus) - LOG2
  e_neg = jnp.sum(jnp.where(keep_neg, eq, 0.0)) / (n_nodes * (n_graphs - 1))
  return e_neg - e_pos
