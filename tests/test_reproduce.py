"""hcl_jax.reproduce: run plans, dry run, report from fake results, configs.

Nothing trains here: finished runs are fake results.json files written to
temporary directories; the expected means/stds are computed in the test.
"""

import io
import json
import pathlib
import re
import shlex
import statistics
import sys

import pytest

from hcl_jax.config import check as config_check
from hcl_jax.reproduce import cli, report, runner, tables

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from launch import subcommands, topology, tpu  # noqa: E402

# (cell dir, loss.name, tau_plus, beta, config method) written out by hand.
EXPECTED_CELLS = [
    ("simclr", "nt_xent", 0.0, 0.0, "simclr"),
    ("debiased", "dcl", 0.1, 0.0, "dcl"),
    ("hard_beta0.5", "hcl", 0.1, 0.5, "hcl"),
    ("hard_beta1", "hcl", 0.1, 1.0, "hcl"),
    ("hard_beta2", "hcl", 0.1, 2.0, "hcl"),
    ("hard_beta6", "hcl", 0.1, 6.0, "hcl"),
]
PUBLISHED_STL10 = ["80.15", "84.26", "86.38", "87.44", "87.09", "83.09"]


def flag(argv, name):
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--config.{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def option(argv, name):
  return argv[argv.index(name) + 1]


def run_config(argv):
  """The config a command of the plan trains with: its --config and flags, as main loads them."""
  return config_check.load_and_validate(option(argv, "--config"),
                                        argv[argv.index("--workdir") + 2:])


def write_results(root, table, cell, seed, linear, knn, wall):
  run = pathlib.Path(root) / table / cell / f"seed{seed}"
  run.mkdir(parents=True, exist_ok=True)
  (run / "results.json").write_text(json.dumps(
      {"linear_top1": linear, "knn_top1": knn, "config": f"configs/{table}_x.py",
       "seed": seed, "wall_time_s": wall}))


def dry_run(tmp_path, *argv):
  out = io.StringIO()
  assert cli.main(["--dry-run", "--workdir", str(tmp_path), *argv], out=out) == 0
  lines = out.getvalue().splitlines()
  statuses = {}
  for line in lines:
    m = re.fullmatch(r"# (done|resume|new)\s+(\S+) seed(\d+): (\S+)", line)
    if m:
      statuses[(m.group(2), int(m.group(3)))] = (m.group(1), m.group(4))
  commands = [shlex.split(l) for l in lines if l and not l.startswith("#")]
  return statuses, commands


@pytest.mark.parametrize("table", ["stl10", "cifar100", "digits"])
def test_dry_run_lists_every_cell_and_seed(tmp_path, table):
  statuses, commands = dry_run(tmp_path, "--table", table, "--seeds", "3", "--epochs", "7",
                               "--", "--config.data_dir=/tfds")
  assert len(statuses) == 18 and len(commands) == 18
  expected = {}
  for cell, loss, tau_plus, beta, method in EXPECTED_CELLS:
    for seed in range(3):
      expected[(cell, seed)] = (loss, tau_plus, beta, method)
  seen = set()
  for argv in commands:
    assert argv[0] == sys.executable and argv[1:3] == ["-m", "hcl_jax.main"]
    workdir = pathlib.Path(option(argv, "--workdir"))
    assert workdir.parent.parent == tmp_path / table
    cell, seed = workdir.parent.name, int(workdir.name.removeprefix("seed"))
    loss, tau_plus, beta, method = expected[(cell, seed)]
    config = run_config(argv)
    assert int(flag(argv, "seed")) == seed == config.seed
    assert config.loss.name == loss
    assert config.loss.tau_plus == tau_plus
    assert float(flag(argv, "loss.beta")) == beta == config.loss.beta
    assert flag(argv, "num_epochs") == "7"
    assert argv[-1] == "--config.data_dir=/tfds"
    # The evaluation protocol is in every command (issue 13): the config its
    # --config names (with its dataset and method) sets it.
    assert config.eval.readout == ("fast" if table == "digits" else "published")
    assert (config.eval.image_size or config.image_size) == {"stl10": 96, "digits": 16}.get(
        table, 32)
    assert config.model.bn_group_size == (0 if table == "digits" else 128)
    assert config.augment.blur_kernel_size == (1 if table == "digits" else 3)
    config_arg = option(argv, "--config")
    assert config_arg == ("configs/digits.py" if table == "digits"
                          else f"configs/paper.py:dataset={table},method={method}")
    assert (REPO_ROOT / config_arg.split(":")[0]).is_file()
    assert statuses[(cell, seed)] == ("new", str(workdir))
    seen.add((cell, seed))
  assert seen == set(expected)


def test_dry_run_marks_done_and_resumable(tmp_path):
  write_results(tmp_path, "cifar10", "hard_beta2", 1, 90.0, 88.0, 10.0)
  checkpoint = tmp_path / "cifar10" / "simclr" / "seed0" / "checkpoints" / "1000"
  checkpoint.mkdir(parents=True)
  (tmp_path / "cifar10" / "debiased" / "seed0").mkdir(parents=True)  # empty: new
  statuses, commands = dry_run(tmp_path, "--table", "cifar10", "--seeds", "2")
  assert statuses[("hard_beta2", 1)][0] == "done"
  assert statuses[("simclr", 0)][0] == "resume"
  assert statuses[("debiased", 0)][0] == "new"
  assert sum(s == "new" for s, _ in statuses.values()) == 10
  # Done runs are listed but have no command; the others do.
  workdirs = [option(argv, "--workdir") for argv in commands]
  assert len(commands) == 11
  assert str(tmp_path / "cifar10" / "hard_beta2" / "seed1") not in workdirs
  assert str(tmp_path / "cifar10" / "simclr" / "seed0") in workdirs


def test_run_skips_finished_runs(tmp_path, monkeypatch):
  """The real run loop launches exactly the unfinished runs, then reports."""
  for cell, *_ in EXPECTED_CELLS:
    if cell != "hard_beta6":
      write_results(tmp_path / "runs", "digits", cell, 0, 50.0, 40.0, 1.0)
  launched = []

  class FakePopen:
    def __init__(self, argv, cwd):
      launched.append((argv, cwd))
      write_results(tmp_path / "runs", "digits", "hard_beta6", 0, 60.0, 45.0, 2.0)

    def wait(self):
      return 0

    def poll(self):
      return 0

  monkeypatch.setattr(runner.subprocess, "Popen", FakePopen)
  code = cli.main(["--table", "digits", "--workdir", str(tmp_path / "runs"),
                         "--out-dir", str(tmp_path / "out")], out=io.StringIO())
  assert code == 0
  assert len(launched) == 1
  argv, cwd = launched[0]
  assert cwd == REPO_ROOT
  assert flag(argv, "loss.beta") == "6.0"
  text = (tmp_path / "out" / "digits.md").read_text()
  assert "Total wall time (sum of the runs' `wall_time_s`): 7 s" in text


def test_run_stops_when_a_training_exits_without_results(tmp_path, monkeypatch):
  launched = []

  class StoppedPopen:   # e.g. preempted: checkpointed, exit 75, no results.json
    def __init__(self, argv, cwd):
      launched.append(argv)

    def wait(self):
      return 75

    def poll(self):
      return 75

  monkeypatch.setattr(runner.subprocess, "Popen", StoppedPopen)
  code = cli.main(["--table", "digits", "--seeds", "2", "--workdir", str(tmp_path),
                         "--out-dir", str(tmp_path / "out")], out=io.StringIO())
  assert code == 1 and len(launched) == 1


def test_report_from_fake_results(tmp_path):
  # linear, knn, wall per (cell, seed); two cells left without runs.
  fake = {
      "simclr": [(80.0, 75.0, 100.0), (81.0, 76.5, 110.0), (82.5, 74.0, 120.0)],
      "debiased": [(84.0, 80.0, 200.0), (85.0, 79.0, 210.0)],
      "hard_beta1": [(87.25, 83.0, 300.0)],
      "hard_beta2": [(86.0, 82.0, 50.0), (88.0, 84.0, 50.0), (87.0, 81.0, 50.0)],
  }
  for cell, runs in fake.items():
    for seed, (linear, knn, wall) in enumerate(runs):
      write_results(tmp_path / "runs", "stl10", cell, seed, linear, knn, wall)
  # A run with no results.json (interrupted) is not counted.
  (tmp_path / "runs" / "stl10" / "hard_beta6" / "seed0" / "checkpoints").mkdir(parents=True)

  out = io.StringIO()
  assert cli.main(["--table", "stl10", "--report-only", "--seeds", "3",
                         "--workdir", str(tmp_path / "runs"),
                         "--out-dir", str(tmp_path / "out")], out=out) == 0
  text = (tmp_path / "out" / "stl10.md").read_text()
  png = (tmp_path / "out" / "stl10.png").read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

  rows = [l for l in text.splitlines() if l.startswith("| Hard") or l.startswith("| SimCLR")
          or l.startswith("| Debiased")]
  assert len(rows) == 6
  by_cell = dict(zip([c[0] for c in EXPECTED_CELLS], rows))
  for (cell, *_), published in zip(EXPECTED_CELLS, PUBLISHED_STL10):
    cols = [c.strip() for c in by_cell[cell].strip("|").split("|")]
    assert cols[3] == published
    runs = fake.get(cell, [])
    assert cols[9] == f"{len(runs)}/3"
    if not runs:
      assert cols[4] == "—" and cols[6] == "—" and cols[5] == "—"
      continue
    assert cols[8] == "fast?"   # results.json without a "readout" key
    linear = [r[0] for r in runs]
    knn = [r[1] for r in runs]
    if len(runs) == 1:
      assert cols[4] == f"{linear[0]:.2f}" and cols[6] == f"{knn[0]:.2f}"
    else:
      assert cols[4] == f"{statistics.mean(linear):.2f} ± {statistics.stdev(linear):.2f}"
      assert cols[6] == f"{statistics.mean(knn):.2f} ± {statistics.stdev(knn):.2f}"
  # By hand: simclr linear 80, 81, 82.5 -> mean 81.17, sample std 1.26.
  assert "| 81.17 ± 1.26 |" in by_cell["simclr"]
  # Paired differences to SimCLR by hand. hard_beta2 - simclr, seeds 0-2:
  # 6, 7, 4.5: mean 5.8333, sd 1.2583, t(0.975, 2) = 4.3027 (tables):
  # half-width 4.3027 * 1.2583 / sqrt(3) = 3.1258 -> [2.71, 8.96], excludes 0.
  assert "| +5.83 [+2.71, +8.96] * |" in by_cell["hard_beta2"]
  # debiased: 4, 4 (sd 0) -> [4, 4]; hard_beta1: one pair, no interval.
  assert "| +4.00 [+4.00, +4.00] * |" in by_cell["debiased"]
  assert "| +7.25 (n=1) |" in by_cell["hard_beta1"]
  # kNN: hard_beta2 - simclr = 7, 7.5, 7: mean 7.1667, sd 0.2887,
  # half 4.3027 * 0.2887 / sqrt(3) = 0.7172 -> [6.45, 7.88].
  assert "| +7.17 [+6.45, +7.88] * |" in by_cell["hard_beta2"]
  assert "(baseline)" in by_cell["simclr"]
  total = sum(r[2] for runs in fake.values() for r in runs)
  assert total == 1190.0
  assert "Total wall time (sum of the runs' `wall_time_s`): 1,190 s (0.33 h)" in text
  assert ("python -m hcl_jax.reproduce --table stl10 --report-only --seeds 3 --workdir "
          f"{tmp_path / 'runs'} --out-dir {tmp_path / 'out'}") in text


def test_collect_results_every_seed_found(tmp_path):
  write_results(tmp_path, "cifar10", "simclr", 0, 70.0, 60.0, 1.0)
  write_results(tmp_path, "cifar10", "simclr", 4, 72.0, 61.0, 1.0)
  (tmp_path / "cifar10" / "simclr" / "seed2").mkdir()  # unfinished
  found = report.collect_results(tmp_path, "cifar10")
  assert [r["seed"] for r in found["simclr"]] == [0, 4]
  assert found["debiased"] == []
  only = report.collect_results(tmp_path, "cifar10", seeds=[0, 1])
  assert [r["linear_top1"] for r in only["simclr"]] == [70.0]


def test_cifar_report_has_no_published_numbers(tmp_path):
  write_results(tmp_path, "cifar100", "hard_beta0.5", 0, 60.0, 55.0, 5.0)
  results = report.collect_results(tmp_path, "cifar100")
  md, png = report.write_report("cifar100", results, tmp_path / "out", "CMD")
  rows = [l for l in md.read_text().splitlines()
          if l.startswith(("| SimCLR", "| Debiased", "| Hard"))]
  assert len(rows) == 6
  assert all(r.split("|")[4].strip() == "—" for r in rows)
  assert png.read_bytes()[:4] == b"\x89PNG"


def test_tpu_commands_are_valid_launch_commands(tmp_path):
  out = io.StringIO()
  assert cli.main(["--table", "stl10", "--seeds", "2", "--tpu-commands",
                         "--zone", "us-central2-b", "--spot",
                         "--workdir", "gs://bkt/hcl", "--", "--config.data_dir=gs://bkt/tfds"],
                        out=out) == 0
  commands = [shlex.split(l) for l in out.getvalue().splitlines() if not l.startswith("#")]
  assert len(commands) == 3 * 12
  names = set()
  for cmd in commands:
    assert cmd[:2] == ["python", "launch/tpu.py"]
    args = tpu.parse_args(cmd[2:])   # exits on a bad command
    names.add(args.name)
    if args.command == "run":
      subcommands.validate_run(args, topology.parse_accelerator_type(args.accelerator_type))
      assert args.workdir.startswith("gs://bkt/hcl/stl10/")
      assert "--config.data_dir=gs://bkt/tfds" in args.extra
      assert any(a.startswith("--config.loss.beta=") for a in args.extra)
  assert len(names) == 12


def test_bad_arguments_rejected(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--table", "imagenet", "--dry-run"])
  assert e.value.code == 2
  assert "imagenet" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["--table", "stl10", "--seeds", "0", "--dry-run"])
  with pytest.raises(SystemExit):
    cli.main(["--table", "stl10", "--dry-run", "--", "positional"])
  with pytest.raises(SystemExit):
    cli.main(["--table", "stl10", "--tpu-commands", "--zone", "us-central2-b",
                    "--workdir", str(tmp_path)])
  with pytest.raises(ValueError, match="imagenet"):
    runner.plan_runs("imagenet", seeds=1)
  with pytest.raises(ValueError, match="imagenet"):
    report.collect_results(tmp_path, "imagenet")
  with pytest.raises(ValueError, match="seeds"):
    runner.plan_runs("stl10", seeds=0)


def test_estimate_by_hand():
  est = tables.estimate_run("stl10")
  # 400 epochs x 410 steps x 256 images x 2 views x 7.45 GFLOP.
  assert est.pretrain_flops == pytest.approx(400 * 104_960 * 2 * 7.45e9)
  assert est.readout_flops == pytest.approx(100 * 5_000 * 2.47e9)
  assert est.hours["TPU v4-8"] == pytest.approx(
      (400 * 104_960 * 14.9e9 + 100 * 5_000 * 2.47e9) / (0.3 * 1100e12) / 3600)


def load_config(name):
  """configs/NAME.py or configs/NAME.py:ARG, as hcl_jax.main loads it."""
  return config_check.load(f"configs/{name}")


def flatten(config, prefix=""):
  flat = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "stl10"])
@pytest.mark.parametrize("method,loss,tau_plus,beta", [
    ("simclr", "nt_xent", 0.0, 0.0), ("dcl", "dcl", 0.1, 0.0), ("hcl", "hcl", 0.1, 1.0)])
def test_paper_configs_have_published_values(dataset, method, loss, tau_plus, beta):
  config = load_config(f"paper.py:dataset={dataset},method={method}")
  assert config.dataset == dataset
  assert config.image_size == 32
  assert config.batch_size == 256
  assert config.num_epochs == 400
  assert config.model.name == "resnet50"
  assert config.model.stem == "cifar"
  assert config.model.width_multiplier == 1.0
  assert config.model.projection_hidden_dim == 512
  assert config.model.projection_dim == 128
  assert config.loss.name == loss
  assert config.loss.temperature == 0.5
  assert config.loss.tau_plus == tau_plus
  assert config.loss.beta == beta
  assert config.loss.beta_anneal == "none"
  assert config.optimizer.name == "adam"
  assert config.optimizer.learning_rate == 1e-3
  assert config.optimizer.weight_decay == 1e-6
  assert config.eval.linear_epochs == 100
  assert config.eval.linear_batch_size == 512
  assert config.eval.linear_learning_rate == 1e-3
  assert config.eval.linear_weight_decay == 1e-6
  assert config.eval.knn_k == 200 and config.eval.knn_temperature == 0.5
  assert config.data.shuffle_buffer == {"stl10": 105_000}.get(dataset, 50_000)
  # The published protocol (issue 13): blur kernel int(0.1 * 32), evaluation at
  # the dataset's own size, 2 GPUs x 128 images per BatchNorm, image/linear.py.
  assert config.augment.blur_kernel_size == 3 and config.augment.blur_prob == 0.5
  assert tuple(config.augment.blur_sigma) == (0.1, 2.0)
  assert config.eval.image_size == {"stl10": 96}.get(dataset, 32)
  assert config.model.bn_group_size == 128
  assert config.eval.readout == "published"
  # Every schema key (configs/digits.py) is there: main may read any of them.
  assert set(flatten(load_config("digits.py"))) == set(flatten(config))
  assert f"--config configs/paper.py:dataset={dataset},method={method} " in open(
      REPO_ROOT / "configs" / "paper.py").read()


def test_digits_config_unchanged():
  config = load_config("digits.py")
  assert (config.model.name, config.model.width_multiplier, config.num_epochs) == (
      "resnet18", 0.25, 30)
  assert (config.loss.name, config.loss.tau_plus, config.loss.beta) == ("hcl", 0.1, 1.0)


def test_readout_override_and_results_record_protocol(tmp_path):
  _, commands = dry_run(tmp_path, "--table", "stl10", "--readout", "fast")
  assert all(flag(argv, "eval.readout") == "fast" for argv in commands)
  assert all(run_config(argv).eval.image_size == 96 for argv in commands)
  run = tmp_path / "runs" / "digits" / "simclr" / "seed0"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps(
      {"linear_top1": 80.0, "knn_top1": 70.0, "seed": 0, "readout": "published",
       "eval_image_size": 96, "bn_group_size": 128}))
  md, _ = report.write_report("digits", report.collect_results(tmp_path / "runs", "digits"),
                                 tmp_path / "out", "cmd")
  text = md.read_text()
  assert "| SimCLR | 0 | 0 | — | 80.00 | (baseline) | 70.00 | (baseline) | published | 1 |" in text
  assert "| simclr | 0 | 80.00 | 70.00 | published | 96 | 128 |" in text
