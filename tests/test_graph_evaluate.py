"""hcl_jax.graph.evaluate_svc: the published nested SVC protocol."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.svm import SVC

from hcl_jax.graph import evaluate_svc


def data(n=60, seed=0):
  rng = np.random.default_rng(seed)
  y = np.repeat([0, 1], n // 2)
  x = rng.normal(size=(n, 5)) + 0.8 * y[:, None]
  return x, y


def test_matches_nested_cross_val_score():
  """Same folds and C grid written another way: cross_val_score over a GridSearchCV."""
  x, y = data()
  want = cross_val_score(
      GridSearchCV(SVC(), {"C": [1e-3, 1e-2, 1e-1, 1, 10, 100, 1000]}, cv=5,
                   scoring="accuracy"),
      x, y, cv=StratifiedKFold(10, shuffle=True, random_state=3), scoring="accuracy")
  assert evaluate_svc.svc_accuracy(x, y, seed=3) == pytest.approx(100 * want.mean())


def test_separable_and_chance():
  x, y = data()
  assert evaluate_svc.svc_accuracy(np.c_[x, 10.0 * y], y, seed=0) == 100.0
  noise = np.random.default_rng(1).normal(size=(60, 5))
  assert 20.0 <= evaluate_svc.svc_accuracy(noise, y, seed=0) <= 80.0


def test_non_finite_embeddings_refused():
  x, y = data()
  x[3, 1] = np.nan
  with pytest.raises(ValueError, match="NaN or inf"):
    evaluate_svc.svc_accuracy(x, y, seed=0)
