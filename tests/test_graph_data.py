"""hcl_jax.graph.tu_data and model: the TU reader, padded batches, the GIN encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcl_jax.graph import model as model_lib
from hcl_jax.graph import tu_data


def write_tu(folder, name, edges, node_graph, graph_labels, node_labels=None,
             attributes=None):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
  (folder / f"{name}_graph_indicator.txt").write_text("".join(f"{g}\n" for g in node_graph))
  (folder / f"{name}_graph_labels.txt").write_text("".join(f"{y}\n" for y in graph_labels))
  if node_labels is not None:
    (folder / f"{name}_node_labels.txt").write_text("".join(f"{v}\n" for v in node_labels))
  if attributes is not None:
    (folder / f"{name}_node_attributes.txt").write_text(
        "".join(", ".join(str(v) for v in row) + "\n" for row in attributes))


def test_mutag_from_the_grakel_wheel():
  ds = tu_data.load_tu_dataset("MUTAG")
  # MUTAG: 188 graphs, 3371 nodes, 3721 undirected edges, 7 node labels, classes 63 / 125.
  assert len(ds) == 188 and ds.num_features == 7 and ds.feature_kind == "node_labels"
  assert sorted(np.bincount(ds.labels)) == [63, 125]
  assert sum(len(f) for f in ds.node_features) == 3371
  assert sum(e.shape[1] for e in ds.edges) == 2 * 3721
  assert all(np.all(f.sum(axis=1) == 1) for f in ds.node_features)   # one-hot rows


def test_reader_drops_self_loops_and_duplicates(tmp_path):
  # Graph 1: nodes 1-3, a triangle written in both directions, plus a self-loop on 1
  # and the edge 1-2 twice. Graph 2: nodes 4-5, one edge. Labels -1 / 1; node
  # labels 1..3 (PyG shifts them to start at 0).
  edges = [(1, 2), (2, 1), (2, 3), (3, 2), (1, 3), (3, 1), (1, 1), (1, 2), (4, 5), (5, 4)]
  write_tu(tmp_path / "TOY", "TOY", edges, [1, 1, 1, 2, 2], [-1, 1], node_labels=[1, 3, 2, 1, 1],
           attributes=[[0.5, 1.0]] * 5)
  ds = tu_data.load_tu_dataset("TOY", str(tmp_path))
  assert ds.labels.tolist() == [0, 1]
  np.testing.assert_array_equal(ds.node_features[0], np.eye(3)[[0, 2, 1]])
  assert sorted(map(tuple, ds.edges[0].T)) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
  assert sorted(map(tuple, ds.edges[1].T)) == [(0, 1), (1, 0)]
  assert ds.node_attributes[1].shape == (2, 2)


def test_degree_features(tmp_path):
  # No node labels: one-hot out-degree (max degree 3 -> 4 columns).
  write_tu(tmp_path, "DEG", [(1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (4, 1)], [1] * 4 + [2, 2],
           [0, 1])
  ds = tu_data.load_tu_dataset("DEG", str(tmp_path))
  assert ds.feature_kind == "one_hot_degree"
  np.testing.assert_array_equal(ds.node_features[0], np.eye(4)[[3, 1, 1, 1]])
  np.testing.assert_array_equal(ds.node_features[1], np.eye(4)[[0, 0]])


def test_normalized_degree_above_1000(tmp_path):
  # A star with 1000 leaves: degree 1000 >= 1000 -> (deg - mean) / std (unbiased).
  star = [(1, k) for k in range(2, 1002)] + [(k, 1) for k in range(2, 1002)]
  write_tu(tmp_path, "STAR", star + [(1002, 1003), (1003, 1002)], [1] * 1001 + [2, 2], [0, 1])
  ds = tu_data.load_tu_dataset("STAR", str(tmp_path))
  deg = np.array([1000] + [1] * 1000 + [1, 1], np.float64)
  want = (deg - deg.mean()) / deg.std(ddof=1)
  got = np.concatenate([f[:, 0] for f in ds.node_features])
  assert ds.feature_kind == "normalized_degree"
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_missing_dataset_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="PROTEINS.zip"):
    tu_data.load_tu_dataset("PROTEINS", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="needs config.data_dir"):
    tu_data.load_tu_dataset("DD")


def test_few_shapes_and_one_graph_batch_refused():
  ds = tu_data.load_tu_dataset("MUTAG")
  batches = tu_data.make_batches(ds, tu_data.shuffled_order(len(ds), 0), 16)
  shapes = {(b.x.shape, b.senders.shape) for b in batches}
  assert len(batches) == 12 and len(shapes) <= 4
  assert sum(b.num_graphs for b in batches) == 188
  assert sum(b.num_nodes for b in batches) == 3371
  with pytest.raises(ValueError, match="last batch of one graph"):
    tu_data.make_batches(ds, range(17), 16)


def numpy_encoder(params, batch, num_layers=3):
  """Dense-adjacency float64 oracle of GIN + masked BatchNorm (train mode)."""
  n, k = batch.num_nodes, batch.num_graphs
  x = batch.x[:n].astype(np.float64)
  adj = np.zeros((n, n))
  for s, r in zip(batch.senders, batch.receivers):
    if s < n:
      adj[r, s] += 1.0
  member = np.eye(k)[batch.node_graph[:n]]   # [n, k]
  outs = []
  for i in range(num_layers):
    d0, d1 = params[f"gin{i}_dense0"], params[f"gin{i}_dense1"]
    bn = params[f"bn{i}"]
    h = x + adj @ x
    h = np.maximum(h @ d0["kernel"] + d0["bias"], 0) @ d1["kernel"] + d1["bias"]
    h = np.maximum(h, 0)
    x = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) * bn["scale"] + bn["bias"]
    outs.append(x)
  return np.concatenate([member.T @ o for o in outs], 1), np.concatenate(outs, 1)


def test_encoder_matches_dense_oracle_and_ignores_padding():
  ds = tu_data.load_tu_dataset("MUTAG")
  idx = [0, 5, 17, 42, 99]
  small = tu_data.pad_batch(ds, idx, 8)
  big = tu_data.pad_batch(ds, idx, 8, num_nodes=small.x.shape[0] + 100,
                          num_edges=small.senders.shape[0] + 300)
  model = model_lib.InfoGraph(32, 3)
  variables = model_lib.init_variables(model, small, jax.random.key(0))
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  encoder = model_lib.GINEncoder(32, 3)
  enc_vars = {"params": variables["params"]["encoder"],
              "batch_stats": variables["batch_stats"]["encoder"]}
  want_y, want_m = numpy_encoder(params["encoder"], small)
  for batch in (small, big):
    (y, m), _ = encoder.apply(enc_vars, batch, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y)[:5], want_y, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(m)[:batch.num_nodes], want_m, rtol=2e-4, atol=2e-4)
    assert np.all(np.asarray(y)[5:] == 0)   # padding graph slots pool nothing


def test_batchnorm_running_stats_torch_convention():
  """Running mean / unbiased variance with momentum 0.1 over the real rows only."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 3)), jnp.float32)
  mask = jnp.asarray([True] * 5 + [False] * 2)
  x = x.at[5:].set(1e6)   # padding rows must not move the statistics
  bn = model_lib.MaskedBatchNorm()
  variables = bn.init(jax.random.key(0), x, mask, train=True)
  _, updates = bn.apply(variables, x, mask, train=True, mutable=["batch_stats"])
  real = np.asarray(x[:5], np.float64)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * real.mean(0), rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * real.var(0, ddof=1),
                             rtol=1e-5)


def test_heads_initialisation():
  """Xavier-uniform kernels (|w| <= sqrt(6 / (in + out))) and zero biases everywhere."""
  ds = tu_data.load_tu_dataset("MUTAG")
  batch = tu_data.pad_batch(ds, [0, 1, 2], 4)
  params = model_lib.init_variables(model_lib.InfoGraph(32, 3), batch, jax.random.key(1))["params"]
  dense = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)]
  kernels = [leaf for path, leaf in dense if path[-1].key == "kernel"]
  biases = [leaf for path, leaf in dense if path[-1].key == "bias" and "bn" not in str(path)]
  assert len(kernels) == 6 + 8 and all(np.all(np.asarray(b) == 0) for b in biases)
  for k in kernels:
    fan_in, fan_out = k.shape
    bound = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.8 * bound


# --------------------------------------------------------------------------
# The strict reader: each damage to a copy of MUTAG is one line naming the
# file and, where one line is at fault, its number.


def damaged_mutag(tmp_path, name, edit):
  """A copy of MUTAG in tmp_path/MUTAG with ``edit(lines)`` applied to file
  MUTAG_<name>.txt (a list of its lines, edited in place)."""
  source = tu_data.grakel_mutag_dir()
  folder = tmp_path / "MUTAG"
  folder.mkdir()
  for path in source.iterdir():
    (folder / path.name).write_text(path.read_text())
  target = folder / f"MUTAG_{name}.txt"
  lines = target.read_text().splitlines() if target.exists() else []
  edit(lines)
  target.write_text("".join(line + "\n" for line in lines))
  return target


def load_error(tmp_path) -> str:
  with pytest.raises(tu_data.TUFormatError) as info:
    tu_data.load_tu_dataset("MUTAG", str(tmp_path))
  message = str(info.value)
  assert "\n" not in message
  return message


def set_line(number, text):
  def edit(lines):
    lines[number - 1] = text
  return edit


@pytest.mark.parametrize("name, edit, want", [
    # A node_labels file one line short (the old reader let edges point into
    # the next graph's labels or into padding).
    ("node_labels", lambda lines: lines.pop(),
     ": 3370 lines, but MUTAG_graph_indicator.txt has 3371 nodes."),
    ("node_labels", lambda lines: lines.append("1"),
     ": 3372 lines, but MUTAG_graph_indicator.txt has 3371 nodes."),
    ("node_labels", set_line(7, "C"), " line 7: 'C' is not one integer."),
    ("node_labels", set_line(8, "1, 2"), " line 8: '1, 2' is not one integer as on line 1."),
    ("node_attributes", lambda lines: lines.extend(["0.5, 1.0"] * 3370),
     ": 3370 lines, but MUTAG_graph_indicator.txt has 3371 nodes."),
    ("graph_labels", lambda lines: lines.pop(0),
     ": 187 lines, but MUTAG_graph_indicator.txt has 188 graphs."),
    ("graph_labels", set_line(5, "-1.5"), " line 5: '-1.5' is not one integer."),
    # An empty A.txt (the old reader: IndexError).
    ("A", lambda lines: lines.clear(), ": empty; it lists the edges"),
    ("A", set_line(12, "x, 3"), " line 12: 'x, 3' is not two integers."),
    ("A", set_line(12, "2, 3, 4"), " line 12: '2, 3, 4' is not two integers."),
    ("A", set_line(12, "5"), " line 12: '5' is not two integers."),
    ("A", set_line(12, ""), " line 12: empty line (blank lines only at the end)."),
    ("A", set_line(3, "3, 3372"),
     " line 3: node 3372 is outside 1..3371 (MUTAG_graph_indicator.txt has 3371 nodes)."),
    ("A", set_line(3, "0, 2"), " line 3: node 0 is outside 1..3371"),
    ("A", set_line(3, "1, 20"),
     " line 3: edge 1, 20 joins graph 1 and graph 2 (per MUTAG_graph_indicator.txt)."),
    # A graph id 0 (the old reader: a misleading count of graph labels).
    ("graph_indicator", set_line(1, "0"), " line 1: graph id 0; ids are 1..G, the first is 1."),
    ("graph_indicator", set_line(19, "1"),   # graph 1: lines 1-17, graph 2: 18-30
     " line 19: graph id 1 after 2; nodes must be sorted by graph."),
    ("graph_indicator", lambda lines: lines.__setitem__(
        slice(17, None), [str(int(v) + 1) for v in lines[17:]]),
     " line 18: graph id 3 after 1; ids are 1..G with no gap (no graph 2)."),
    ("graph_indicator", lambda lines: lines.clear(), ": empty; it lists the graph id"),
])
def test_damaged_mutag_one_line_error(tmp_path, name, edit, want):
  path = damaged_mutag(tmp_path, name, edit)
  message = load_error(tmp_path)
  assert message.startswith(str(path)), message
  assert message == str(path) + want or message.startswith(str(path) + want), message


def test_damaged_mutag_trailing_blank_lines_and_windows_endings_read(tmp_path):
  path = damaged_mutag(tmp_path, "A", lambda lines: lines.extend(["", "  "]))
  path.write_text(path.read_text().replace("\n", "\r\n"))
  ds = tu_data.load_tu_dataset("MUTAG", str(tmp_path))
  assert sum(e.shape[1] for e in ds.edges) == 2 * 3721


def test_graph_main_prints_the_one_line(tmp_path):
  import subprocess
  import sys
  damaged_mutag(tmp_path, "node_labels", lambda lines: lines.pop())
  proc = subprocess.run(
      [sys.executable, "-m", "hcl_jax.graph.main", "--config", "configs/graph.py:dataset=MUTAG",
       "--workdir", str(tmp_path / "run"), f"--config.data_dir={tmp_path}"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path}/MUTAG/MUTAG_node_labels.txt: 3370 lines, but "
      "MUTAG_graph_indicator.txt has 3371 nodes.")


# --------------------------------------------------------------------------
# Batches of a training run: two shapes, the last batch not padded to a full one.


def test_two_shapes_the_last_batch_its_own():
  ds = tu_data.load_tu_dataset("MUTAG")
  order = tu_data.shuffled_order(len(ds), 0)
  full, last = tu_data.make_batches(ds, order, 128, shapes="two")
  assert (full.num_graphs, last.num_graphs) == (128, 60)
  assert full.graph_mask.shape == (128,) and last.graph_mask.shape == (60,)
  assert last.x.shape[0] < full.x.shape[0] and last.senders.shape[0] < full.senders.shape[0]
  one = tu_data.make_batches(ds, order, 128, shapes="one")
  assert {b.x.shape for b in one} == {full.x.shape} and one[1].graph_mask.shape == (128,)
  batches = tu_data.make_batches(ds, order, 16, shapes="two")   # 11 x 16 + 12
  assert len({(b.x.shape, b.senders.shape, b.graph_mask.shape) for b in batches}) == 2
  assert sum(b.num_nodes for b in batches) == 3371
  assert len({b.x.shape for b in tu_data.make_batches(ds, order[:176], 16, shapes="two")}) == 1
  with pytest.raises(ValueError, match="shapes='three'"):
    tu_data.make_batches(ds, order, 16, shapes="three")


def test_last_batch_padded_or_not_same_loss_gradients_and_embeddings():
  """The previous behaviour (the last 60 graphs padded to a 128-graph batch)
  and the last batch's own shape give the same loss, gradients, batch
  statistics and eval embeddings up to float rounding: padding is masked."""
  from hcl_jax.graph import losses
  from hcl_jax.graph import train
  import optax

  ds = tu_data.load_tu_dataset("MUTAG")
  order = tu_data.shuffled_order(len(ds), 0)
  own = tu_data.make_batches(ds, order, 128, shapes="two")[1]
  padded = tu_data.make_batches(ds, order, 128, shapes="one")[1]
  assert padded.x.shape[0] > own.x.shape[0] and padded.graph_mask.shape[0] == 128
  model = model_lib.InfoGraph(32, 3)
  state = train.create_state(model, optax.adam(1e-3), own, seed=0)
  # Weights after some training, so that the gradients are not the init's (a
  # learning rate of its own: test_graph_train counts the 1e-3 step's compilations).
  step = train.make_train_step(32, 3, 1.1e-3, "jsd_hard", False, 0.5, "zero")
  full = tu_data.make_batches(ds, order, 128, shapes="two")[0]
  for _ in range(3):
    state, _ = step(state, full, jnp.float32(2.0))

  def loss_fn(params, batch):
    (l, g), updates = model.apply({"params": params, "batch_stats": state["batch_stats"]},
                                  batch, train=True, mutable=["batch_stats"])
    loss = losses.local_global_loss(l, g, batch.node_graph, batch.node_mask, batch.graph_mask,
                                    beta=jnp.float32(2.0))
    return loss, updates["batch_stats"]

  out = {}
  for name, batch in (("own", own), ("padded", padded)):
    (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        state["params"], batch)
    emb = train.make_embed(32, 3)({"params": state["params"], "batch_stats": stats}, batch)
    out[name] = loss, stats, grads, np.asarray(emb)[np.asarray(batch.graph_mask)]
  for a, b in zip(jax.tree.leaves(out["own"]), jax.tree.leaves(out["padded"])):
    scale = np.abs(np.asarray(b)).max()
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(scale, 1e-3))


def test_an_epoch_compiles_the_step_at_most_twice():
  from hcl_jax.graph import train
  import optax

  ds = tu_data.load_tu_dataset("MUTAG")
  batches = tu_data.make_batches(ds, tu_data.shuffled_order(len(ds), 1), 16, shapes="two")
  lr = 1.2345e-3   # a step of its own: no other test's compilations in its cache
  step = train.make_train_step(32, 3, lr, "jsd_hard", True, 0.5, "zero")
  state = train.create_state(model_lib.InfoGraph(32, 3), optax.adam(lr), batches[0], seed=0)
  for _ in range(2):
    for batch in batches:
      state, loss = step(state, batch, jnp.float32(0.0))
  assert np.isfinite(float(loss))
  assert step._cache_size() == 2
