"""python -m hcl_jax.reproduce --table <graph dataset>: plan, dry run, report."""

import io
import json
import math

import pytest

from hcl_jax.reproduce import cli
from hcl_jax.graph import reproduce_table as rt


def fake_results(root, table, accs, epoch0=70.0):
  """accs: {(beta, repeat): accuracy}; writes results.json where the runs live."""
  for (beta, repeat), acc in accs.items():
    wd = rt.run_workdir(root, table, beta, repeat)
    wd.mkdir(parents=True)
    (wd / "results.json").write_text(json.dumps({
        "svc_accuracy": acc, "svc_accuracy_epoch0": epoch0 + repeat, "wall_time_s": 10.0,
        "beta": beta, "seed": repeat}))


@pytest.mark.parametrize("table", sorted(rt.TABLES))
def test_dry_run_lists_every_run(tmp_path, table):
  out = io.StringIO()
  assert cli.main(["--table", table, "--dry-run", "--workdir", str(tmp_path)], out) == 0
  text = out.getvalue()
  assert f"4 betas x 10 repeats = 40 runs (0 done" in text
  commands = [line for line in text.splitlines() if line.startswith("python -m hcl_jax")]
  assert len(commands) == 40
  assert f"--config configs/graph.py:dataset={rt.TABLES[table]} " in commands[0]
  assert commands[0].endswith("--config.seed=0 --config.loss.beta=0")
  assert commands[-1].endswith("--config.seed=9 --config.loss.beta=10")
  assert ("needs --data-dir" in text) == (table != "mutag")


def test_dry_run_skips_done(tmp_path):
  fake_results(tmp_path, "mutag", {(0.0, 0): 80.0, (2.0, 1): 81.0})
  out = io.StringIO()
  cli.main(["--table=mutag", "--dry-run", "--workdir", str(tmp_path)], out)
  assert "(2 done: skipped, 0 to resume, 38 to start)" in out.getvalue()


def test_wants_only_graph_tables():
  assert rt.wants(["--table", "mutag"]) and rt.wants(["--table=imdb_binary", "--dry-run"])
  assert not rt.wants(["--table", "stl10"]) and not rt.wants(["--", "--table", "mutag"])


def test_summary_and_paired_differences(tmp_path):
  # beta 0: 80, 84, 86 (repeats 0-2); beta 1: 82, 83 (repeats 0, 2): paired diffs +2, -3.
  accs = {(0.0, 0): 80.0, (0.0, 1): 84.0, (0.0, 2): 86.0, (1.0, 0): 82.0, (1.0, 2): 83.0}
  fake_results(tmp_path, "mutag", accs)
  results = rt.collect_results(rt.plan_runs("mutag", repeats=3, betas=(0.0, 1.0),
                                            root=tmp_path))
  s0, s1 = rt.summarize(results, betas=(0.0, 1.0))
  assert (s0.n, s1.n) == (3, 2)
  assert s0.mean == pytest.approx(250 / 3)
  assert s0.std == pytest.approx(math.sqrt(((80 - 250 / 3) ** 2 + (84 - 250 / 3) ** 2
                                            + (86 - 250 / 3) ** 2) / 2))
  assert s0.epoch0_mean == pytest.approx(71.0)
  assert (s1.diff_n, s1.diff_mean) == (2, pytest.approx(-0.5))
  assert s1.diff_std == pytest.approx(math.sqrt((2.5 ** 2 + 2.5 ** 2) / 1))
  md = rt.render_markdown("mutag", results, "python -m hcl_jax.reproduce --table mutag",
                          repeats=3, betas=(0.0, 1.0), epochs=200)
  assert "| 1 | 2/3 | 82.50 ± 0.71 | 71.00 ± 1.41 | -0.50 ± 3.54 (n=2) | 20 |" in md
  assert "**Partial table**" in md and "50 s (0.8 min)" in md


def test_report_only_writes_markdown_and_plot(tmp_path):
  fake_results(tmp_path, "mutag", {(b, r): 80.0 + b + r for b in (0.0, 1.0, 2.0, 10.0)
                                   for r in range(2)})
  out = io.StringIO()
  code = cli.main(["--table", "mutag", "--report-only", "--repeats", "2", "--workdir",
                         str(tmp_path), "--out-dir", str(tmp_path / "docs")], out)
  assert code == 0
  md = (tmp_path / "docs" / "mutag.md").read_text()
  assert "Partial table" not in md and "| 10 | 2/2 | 90.50 ± 0.71 |" in md
  assert "--report-only" in md and "reproduce --table mutag --repeats 2 --workdir" in md
  assert "+10.00 ± 0.00 (n=2)" in md
  assert (tmp_path / "docs" / "mutag.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_betas_rejected(tmp_path, capsys):
  with pytest.raises(SystemExit):
    cli.main(["--table", "mutag", "--betas", "1,2", "--dry-run"])
  assert "include 0" in capsys.readouterr().err
