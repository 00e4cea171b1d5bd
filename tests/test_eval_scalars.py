"""Evaluation accuracies reach TensorBoard beside the training curves."""

import glob

from hcl_jax.run.metrics_log import MetricLogger


def read_scalars(workdir):
  """{(tag, step): value} of every event file in workdir, read back with TF's reader."""
  import tensorflow as tf
  seen = {}
  for path in glob.glob(str(workdir / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        assert value.metadata.plugin_data.plugin_name == "scalars"
        seen[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  return seen


def test_log_evaluation_writes_eval_scalars(tmp_path):
  with MetricLogger(tmp_path, total_steps=20, progress="none") as logger:
    logger.log(20, {"loss": 4.0})
    logger.log_evaluation(20, {"linear_top1": 91.25, "knn_top1": 80.5,
                               "random_init_linear_top1": 70.0})
  assert read_scalars(tmp_path) == {("loss", 20): 4.0, ("eval/linear_top1", 20): 91.25,
                                    ("eval/knn_top1", 20): 80.5,
                                    ("eval/random_init_linear_top1", 20): 70.0}


def test_log_evaluation_is_a_no_op_off_the_main_process(tmp_path):
  logger = MetricLogger(tmp_path / "run", total_steps=5, is_main_process=False)
  logger.log_evaluation(5, {"knn_top1": 1.0})
  logger.close()
  assert not (tmp_path / "run").exists()
