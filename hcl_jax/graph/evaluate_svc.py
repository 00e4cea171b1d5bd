"""The published evaluation (evaluate_embedding.py): SVC on frozen graph embeddings.

Graph embeddings y of every graph (encoder in eval mode); 10-fold
StratifiedKFold (shuffled); in each fold GridSearchCV(SVC(), C in
{1e-3, ..., 1e3}, 5-fold, accuracy) fit on the train folds, accuracy on the
test fold; the mean over the folds (here in %).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from hcl_jax.graph.tu_data import GraphBatch

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def svc_accuracy(embeddings: np.ndarray, labels: np.ndarray, *, seed: int,
                 folds: int = 10, inner_folds: int = 5) -> float:
  """Mean test accuracy (%) over ``folds`` stratified shuffled folds."""
  from sklearn.model_selection import GridSearchCV, StratifiedKFold
  from sklearn.svm import SVC

  x = np.asarray(embeddings, np.float64)
  y = np.asarray(labels)
  if x.ndim != 2 or len(x) != len(y):
    raise ValueError(f"embeddings {x.shape} and labels {y.shape} do not match.")
  if not np.all(np.isfinite(x)):
    raise ValueError("embeddings contain NaN or inf; the training diverged.")
  outer = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  accuracies = []
  for train, test in outer.split(x, y):
    search = GridSearchCV(SVC(), {"C": list(C_GRID)}, cv=inner_folds, scoring="accuracy")
    search.fit(x[train], y[train])
    accuracies.append(float(np.mean(search.predict(x[test]) == y[test])))
  return 100.0 * float(np.mean(accuracies))


def embed_all(embed: Callable[[GraphBatch], np.ndarray], batches: Sequence[GraphBatch]
              ) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings [n, d], labels [n]) of the real graphs of ``batches``, in order."""
  xs, ys = [], []
  for batch in batches:
    emb = np.asarray(embed(batch))
    mask = np.asarray(batch.graph_mask)
    xs.append(emb[mask])
    ys.append(np.asarray(batch.labels)[mask])
  return np.concatenate(xs), np.concatenate(ys)
