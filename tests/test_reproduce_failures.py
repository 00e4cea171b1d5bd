"""A failed reproduction leaves no table that could pass for a result."""

import io
import json
import pathlib

from hcl_jax.reproduce import cli, runner, tables


class FailingPopen:
  """Every training run exits 1 without results.json (e.g. a missing dataset)."""
  launched = 0

  def __init__(self, argv, cwd):
    FailingPopen.launched += 1

  def wait(self):
    return 1

  def poll(self):
    return 1


def _results(root, cell, seed=0):
  run = pathlib.Path(root) / "digits" / cell / f"seed{seed}"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps(
      {"linear_top1": 50.0, "knn_top1": 40.0, "seed": seed, "wall_time_s": 1.0}))


def test_no_report_when_every_run_failed(tmp_path, monkeypatch, capsys):
  FailingPopen.launched = 0
  monkeypatch.setattr(runner.subprocess, "Popen", FailingPopen)
  code = cli.main(["--table", "digits", "--workdir", str(tmp_path / "runs"),
                         "--out-dir", str(tmp_path / "out")], out=io.StringIO())
  assert code == 1 and FailingPopen.launched == len(tables.CELLS)
  assert not (tmp_path / "out" / "digits.md").exists()
  assert "no report written" in capsys.readouterr().err


def test_partial_report_says_it_is_incomplete(tmp_path, monkeypatch):
  _results(tmp_path / "runs", tables.CELLS[0].name)
  monkeypatch.setattr(runner.subprocess, "Popen", FailingPopen)
  code = cli.main(["--table", "digits", "--workdir", str(tmp_path / "runs"),
                         "--out-dir", str(tmp_path / "out")], out=io.StringIO())
  assert code == 1
  text = (tmp_path / "out" / "digits.md").read_text()
  failed = len(tables.CELLS) - 1
  assert f"**Incomplete: 1 of {len(tables.CELLS)} runs finished; failed: " in text
  assert text.count("/seed0") == failed  # each failed run named
