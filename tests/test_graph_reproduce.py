"""python -m hcl_jax.reproduce --table <graph dataset>: plan, dry run, report."""

import io
import json
import math

import pytest

from hcl_jax.reproduce import cli
from hcl_jax.reproduce import graph_tables as rt


def row(key):
  return rt.INFOGRAPH if key == "infograph" else rt.hard_row(key)


def fake_results(root, table, accs, epoch0=70.0):
  """accs: {(beta or "infograph", repeat): accuracy}; writes results.json where the runs live."""
  for (key, repeat), acc in accs.items():
    beta = 0.0 if key == "infograph" else key
    wd = rt.run_workdir(root, table, row(key), repeat)
    wd.mkdir(parents=True)
    (wd / "results.json").write_text(json.dumps({
        "svc_accuracy": acc, "svc_accuracy_epoch0": epoch0 + repeat, "wall_time_s": 10.0,
        "beta": beta, "seed": repeat}))


@pytest.mark.parametrize("table", sorted(rt.TABLES))
def test_dry_run_lists_every_run(tmp_path, table):
  out = io.StringIO()
  assert cli.main(["--table", table, "--dry-run", "--workdir", str(tmp_path)], out) == 0
  text = out.getvalue()
  assert ("5 rows (InfoGraph; JSD_hard beta 0, 1, 2, 10) x 10 repeats = 50 runs (0 done"
          in text)
  commands = [line for line in text.splitlines() if line.startswith("python -m hcl_jax")]
  assert len(commands) == 50
  assert f"--config configs/graph.py:dataset={rt.TABLES[table]} " in commands[0]
  assert commands[0].endswith("--config.seed=0 --config.loss.measure=jsd --config.loss.beta=0")
  assert commands[1].endswith("--config.seed=0 --config.loss.beta=0")
  assert "/infograph/repeat0" in text and "/beta0/repeat0" in text
  assert commands[-1].endswith("--config.seed=9 --config.loss.beta=10")
  assert ("needs --data-dir" in text) == (table != "mutag")


def test_dry_run_skips_done(tmp_path):
  fake_results(tmp_path, "mutag", {(0.0, 0): 80.0, (2.0, 1): 81.0, ("infograph", 3): 79.0})
  out = io.StringIO()
  cli.main(["--table=mutag", "--dry-run", "--workdir", str(tmp_path)], out)
  assert "(3 done: skipped, 0 to resume, 47 to start)" in out.getvalue()


def test_one_registry_chooses_the_kind(capsys):
  assert set(cli.TABLES) == set(rt.TABLES) | {"digits", "cifar10", "cifar100", "stl10"}
  assert {cli.TABLES[t] for t in rt.TABLES} == {"graph"}
  assert cli.table_kind(["--table", "mutag"]) == "graph"
  assert cli.table_kind(["--dry-run", "--table=imdb_binary"]) == "graph"
  assert cli.table_kind(["--table", "stl10", "--seeds", "3"]) == "image"
  assert cli.table_kind(["--table", "digits", "--", "--table", "mutag"]) == "image"
  assert cli.table_kind(["--dry-run"]) is None
  with pytest.raises(SystemExit):
    cli.main(["--table", "mnist", "--dry-run"])
  err = capsys.readouterr().err
  assert "invalid choice: 'mnist'" in err and "mutag" in err and "stl10" in err


def test_summary_and_paired_differences(tmp_path):
  # beta 0: 80, 84, 86 (repeats 0-2); beta 1: 82, 83 (repeats 0, 2): paired diffs +2, -3;
  # InfoGraph: 79 (repeat 1): paired diff -5. Epoch 0: 70 + repeat in every run.
  accs = {(0.0, 0): 80.0, (0.0, 1): 84.0, (0.0, 2): 86.0, (1.0, 0): 82.0, (1.0, 2): 83.0,
          ("infograph", 1): 79.0}
  fake_results(tmp_path, "mutag", accs)
  results = rt.collect_results(rt.plan_runs("mutag", repeats=3, betas=(0.0, 1.0),
                                            root=tmp_path))
  floor, info, s0, s1 = rt.summarize(results, betas=(0.0, 1.0))
  assert (floor.n, info.n, s0.n, s1.n) == (3, 1, 3, 2)
  assert floor.mean == pytest.approx(71.0) and floor.std == pytest.approx(1.0)
  assert (floor.diff_n, floor.diff_mean) == (3, pytest.approx(71.0 - 250 / 3))
  assert (info.diff_n, info.diff_mean) == (1, pytest.approx(-5.0))
  assert s0.mean == pytest.approx(250 / 3)
  assert s0.std == pytest.approx(math.sqrt(((80 - 250 / 3) ** 2 + (84 - 250 / 3) ** 2
                                            + (86 - 250 / 3) ** 2) / 2))
  assert (s1.diff_n, s1.diff_mean) == (2, pytest.approx(-0.5))
  assert s1.diff_std == pytest.approx(math.sqrt((2.5 ** 2 + 2.5 ** 2) / 1))
  md = rt.render_markdown("mutag", results, "python -m hcl_jax.reproduce --table mutag",
                          repeats=3, betas=(0.0, 1.0), epochs=200)
  assert "| JSD_hard β = 1 (hard) | 2/3 | 82.50 ± 0.71 | -0.50 ± 3.54 (n=2) | 20 |" in md
  assert "| untrained encoder (epoch 0) | 3/3 | 71.00 ± 1.00 | -12.33 ± 2.08 (n=3) | — |" in md
  assert "| InfoGraph (JSD) | 1/3 | 79.00 | -5.00 (n=1) | 10 |" in md
  assert "| JSD_hard β = 0 (debiased) | 3/3 | 83.33 ± 3.06 | — | 30 |" in md
  assert "**Partial table**" in md and "60 s (1.0 min)" in md
  assert "is not plain InfoGraph" in md


def test_report_only_writes_markdown_and_plot(tmp_path):
  fake_results(tmp_path, "mutag", {(b, r): 80.0 + b + r for b in (0.0, 1.0, 2.0, 10.0)
                                   for r in range(2)}
               | {("infograph", r): 78.0 + r for r in range(2)})
  out = io.StringIO()
  code = cli.main(["--table", "mutag", "--report-only", "--repeats", "2", "--workdir",
                         str(tmp_path), "--out-dir", str(tmp_path / "docs")], out)
  assert code == 0
  md = (tmp_path / "docs" / "mutag.md").read_text()
  assert "Partial table" not in md and "| JSD_hard β = 10 (hard) | 2/2 | 90.50 ± 0.71 |" in md
  assert "--report-only" in md and "reproduce --table mutag --repeats 2 --workdir" in md
  assert "+10.00 ± 0.00 (n=2)" in md
  assert (tmp_path / "docs" / "mutag.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_betas_rejected(tmp_path, capsys):
  with pytest.raises(SystemExit):
    cli.main(["--table", "mutag", "--betas", "1,2", "--dry-run"])
  assert "include 0" in capsys.readouterr().err
