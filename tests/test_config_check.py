"""Config mistakes: one or two lines naming the key, for every entry point."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from hcl_jax.config import check as config_check

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*argv, cwd=REPO):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=300)
  lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
  return done.returncode, lines


@pytest.mark.parametrize("flag,named", [
    ("--config.los.beta=1", ["config.los", "config.loss"]),         # unknown key
    ("--config.loss.beta=abc", ["config.loss.beta", "abc"]),         # wrong type
    ("--config.loss.beta=-1", ["config.loss.beta", ">= 0"]),          # bad value
])
def test_main_reports_config_mistakes_in_one_line(tmp_path, flag, named):
  code, lines = _run("-m", "hcl_jax.main", "--config", "configs/digits.py",
                     "--workdir", str(tmp_path / "run"), flag)
  assert code != 0
  assert len(lines) <= 2, lines
  assert all(n in lines[-1] for n in named), lines
  assert not (tmp_path / "run").exists()  # nothing started


def test_evaluate_reports_a_bad_saved_config(tmp_path):
  config = config_check.load_and_validate("configs/digits.py").to_dict()
  config["loss"]["betta"] = 1.0
  (tmp_path / "config.json").write_text(json.dumps(config))
  code, lines = _run("-m", "hcl_jax.evaluate", "--workdir", str(tmp_path))
  assert code != 0 and len(lines) <= 2, lines
  assert "config.loss.betta" in lines[-1] and "config.loss.beta" in lines[-1]


def test_reproduce_checks_the_flags_before_any_run(tmp_path):
  code, lines = _run("-m", "hcl_jax.reproduce", "--table", "digits", "--workdir",
                     str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--",
                     "--config.los.beta=1")
  assert code == 2 and len(lines) <= 2, lines
  assert "config.los" in lines[-1] and "config.loss" in lines[-1]
  assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_load_and_validate_applies_overrides_and_ignores_other_flags():
  config = config_check.load_and_validate(
      "configs/paper.py:dataset=stl10,method=hcl", ["--config.loss.beta=2", "--workdir=/tmp/x", "--config.seed=3"])
  assert config.loss.beta == 2.0 and config.seed == 3 and config.dataset == "stl10"


@pytest.mark.parametrize("overrides,named", [
    (["--config.los.beta=1"], "config.los is an unknown key (did you mean config.loss?)"),
    (["--config.loss.betta=1"], "did you mean config.loss.beta?"),
    (["--config.batch_size=2.5"], "--config.batch_size=2.5"),
    (["--config.model.name=resnet7"], "config.model.name"),
    (["--config.eval.readout=slow"], "config.eval.readout"),
    (["--config.profile_steps=5"], "config.profile_steps must be \"\" (no profile) or \"N,M\""),
    (["--config.profile_steps=4,3"], "1 <= N <= M (steps N to M traced); got '4,3'"),
    (["--config.profile_steps=0,2"], "got '0,2'"),
    (["--config.profile_steps=a,b"], "got 'a,b'"),
])
def test_load_and_validate_errors_are_one_line(overrides, named):
  with pytest.raises(ValueError) as error:
    config_check.load_and_validate("configs/digits.py", overrides)
  assert named in str(error.value)
  assert "\n" not in str(error.value)


def test_unknown_key_in_a_config_file(tmp_path):
  path = tmp_path / "typo.py"
  path.write_text(
      "import importlib.util, pathlib\n"
      f"spec = importlib.util.spec_from_file_location('d', {str(REPO / 'configs' / 'digits.py')!r})\n"
      "digits = importlib.util.module_from_spec(spec); spec.loader.exec_module(digits)\n"
      "def get_config():\n"
      "  config = digits.get_config()\n"
      "  config.optimizer.learnig_rate = 0.1\n"
      "  return config\n")
  with pytest.raises(ValueError, match=r"config\.optimizer\.learnig_rate: unknown key "
                                       r"\(did you mean config\.optimizer\.learning_rate\?\)"):
    config_check.load_and_validate(str(path))


def test_missing_config_file_and_configs_found_from_any_cwd(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="config file 'configs/nope.py' not found"):
    config_check.load_and_validate("configs/nope.py")
  monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped ones are used
  assert config_check.load_and_validate("configs/digits.py").dataset == "digits"


@pytest.mark.parametrize("config,named", [
    ("configs/paper.py:dataset=imagenet,method=hcl", ["dataset='imagenet'", "'cifar10'"]),
    ("configs/paper.py:dataset=cifar10,method=moco", ["method='moco'", "'hcl'"]),
    ("configs/paper.py:dataset=cifar10,method=hcl,size=2", ["unknown key 'size'", "dataset, method"]),
    ("configs/paper.py:cifar10", ["'cifar10' is not KEY=VALUE"]),
    ("configs/paper.py", ["missing dataset, method"]),
    ("configs/graph.py:dataset=mutag", ["dataset='mutag'", "'MUTAG'"]),
])
def test_a_bad_config_arg_is_one_line_naming_it(config, named):
  with pytest.raises(ValueError) as error:
    config_check.load(config)
  assert all(n in str(error.value) for n in named), error.value
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("module,config", [
    ("hcl_jax.main", "configs/paper.py:dataset=imagenet,method=hcl"),
    ("hcl_jax.graph.main", "configs/graph.py:dataset=mutag"),
])
def test_entry_points_report_a_bad_config_arg_in_one_line(tmp_path, module, config):
  code, lines = _run("-m", module, "--config", config, "--workdir", str(tmp_path / "run"))
  assert code != 0 and len(lines) <= 2, lines
  assert config in lines[-1] and "expected one of" in lines[-1], lines
  assert not (tmp_path / "run").exists()


def test_config_args_found_from_any_cwd(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped ones are used
  config = config_check.load_and_validate("configs/paper.py:dataset=cifar100,method=dcl")
  assert (config.dataset, config.loss.name) == ("cifar100", "dcl")
  assert config_check.load("configs/graph.py:dataset=PROTEINS").dataset == "PROTEINS"


def test_an_older_config_json_is_completed_from_the_schema():
  import ml_collections

  schema = config_check.load_and_validate("configs/digits.py")
  older = json.loads(json.dumps(schema.to_dict()))   # as config.json holds it
  del older["on_nonfinite"], older["data"]["mean"], older["eval"]["image_size"]
  older["data"]["prefetch"] = 2                     # retired: dropped, not refused
  older["loss"]["beta"] = 2.0
  given = ml_collections.ConfigDict(older)
  config = config_check.validate(given)
  assert config.on_nonfinite == schema.on_nonfinite and config.eval.image_size == 0
  assert tuple(config.data.mean) == tuple(schema.data.mean) and "prefetch" not in config.data
  assert config.loss.beta == 2.0
  assert "on_nonfinite" not in given and "prefetch" in given.data   # not changed


def _numeric_leaves(config, prefix=""):
  """(key, value) of every number or tuple of numbers in a config, walked."""
  for key in config.keys():
    value, name = config[key], f"{prefix}{key}"
    if hasattr(value, "keys"):
      yield from _numeric_leaves(value, name + ".")
    elif isinstance(value, (int, float, tuple, list)) and not isinstance(value, bool):
      yield name, value


def _with(config, key, value):
  """A copy of ``config`` with ``key`` set to ``value`` (of any type, as a
  config.json may hold it: the ConfigDict's own type check is not the one tested)."""
  import ml_collections
  values = config.to_dict()
  *groups, leaf = key.split(".")
  node = values
  for group in groups:
    node = node[group]
  node[leaf] = value
  return ml_collections.ConfigDict(values)


SCHEMA_AND_PAPER = ["configs/base.py", "configs/digits.py",
                    "configs/paper.py:dataset=cifar10,method=hcl",
                    "configs/paper.py:dataset=stl10,method=simclr"]


@pytest.mark.parametrize("path", SCHEMA_AND_PAPER)
def test_every_numeric_key_of_the_schema_refuses_inf_and_nan_naming_it(path):
  """A new numeric key without a check fails here: inf (or NaN) in it must be
  refused in one line naming the key, before anything is written."""
  base = config_check.load_and_validate(path)
  leaves = list(_numeric_leaves(base))
  assert len(leaves) >= 40  # the walk sees the whole schema
  unchecked = []
  for key, value in leaves:
    for bad in (float("inf"), float("nan"), -float("inf")):
      if isinstance(value, (tuple, list)):
        bad_value = (bad,) + tuple(value)[1:]
      else:
        bad_value = bad
      try:
        config_check.validate(_with(base, key, bad_value))
      except config_check.ConfigError as e:
        assert f"config.{key}" in str(e) and "\n" not in str(e), (key, str(e))
        continue
      unchecked.append(f"{key}={bad_value!r}")
  assert not unchecked, f"numeric keys accepted without a check: {unchecked}"


@pytest.mark.parametrize("key,value,allowed", [
    ("eval.knn_temperature", 0.0, "> 0"),
    ("eval.linear_learning_rate", -1.0, "> 0"),
    ("eval.linear_weight_decay", -1e-6, ">= 0"),
    ("model.width_multiplier", float("inf"), "finite"),
    ("augment.flip_prob", 2.0, "[0, 1]"),
    ("augment.jitter_prob", -0.1, "[0, 1]"),
    ("augment.grayscale_prob", 1.5, "[0, 1]"),
    ("augment.crop_scale", (1.0, 0.08), "low <= high"),
    ("augment.crop_scale", (0.0, 1.0), "0 < low"),
    ("augment.crop_scale", (0.5, 1.5), "high <= 1"),
    ("augment.crop_ratio", (4 / 3, 3 / 4), "low <= high"),
    ("augment.hue", 0.6, "[0, 0.5]"),
    ("augment.brightness", -0.4, ">= 0"),
    ("data.std", (0.2, 0.0, 0.2), "> 0"),
    ("data.std", (0.2, 0.2), "3 finite numbers"),
    ("data.mean", (0.5, float("nan"), 0.5), "finite"),
    ("data.shuffle_buffer", 0, ">= 1"),
    ("data.num_parallel_calls", 0, "-1 (autotune)"),
    ("data.threadpool_size", -1, ">= 0"),
])
def test_bad_values_are_named_with_what_is_allowed(key, value, allowed):
  with pytest.raises(config_check.ConfigError) as error:
    config_check.validate(_with(config_check.load_and_validate("configs/digits.py"), key, value))
  message = str(error.value)
  assert f"config.{key}" in message and allowed in message and repr(value)[:4] in message
  assert "\n" not in message


def test_a_start_that_fails_validation_writes_nothing_to_the_workdir(tmp_path):
  """The corrected rerun must not be refused as "a different config"."""
  workdir = tmp_path / "w"
  code, lines = _run("-m", "hcl_jax.main", "--config", "configs/digits.py",
                     f"--workdir={workdir}", "--config.eval.knn_temperature=0")
  assert code != 0 and len(lines) == 1 and "config.eval.knn_temperature" in lines[0], lines
  assert not workdir.exists() or not any(workdir.iterdir())


def _keys(config, prefix=""):
  """Every key of a config, groups and leaves, as dotted names."""
  for key in config.keys():
    yield prefix + key
    if hasattr(config[key], "keys"):
      yield from _keys(config[key], prefix + key + ".")


def _image_configs():
  from hcl_jax.config import registry
  return ["configs/digits.py"] + [f"configs/paper.py:dataset={d},method={m}"
                                  for d in registry.DATASETS for m in registry.METHODS]


def test_the_image_configs_have_exactly_the_keys_of_base():
  """digits and every paper variant start from configs/base.py and only
  override: no key invented by an override, none dropped."""
  base = set(_keys(config_check.base_config()))
  assert len(base) >= 50   # the walk sees the whole schema
  for path in _image_configs():
    keys = set(_keys(config_check.load(path)))
    assert keys == base, (path, sorted(keys - base), sorted(base - keys))


def test_base_says_what_each_key_is():
  """Each key of configs/base.py (the image and the graph schema) has a
  comment: on its line or right above it."""
  import functools
  import io
  import re
  import tokenize

  source = (REPO / "configs" / "base.py").read_text()
  commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
               if tok.type == tokenize.COMMENT}
  lines = source.splitlines()
  assigned = []
  for number, line in enumerate(lines, 1):
    match = re.match(r"\s*config\.([a-z_.]+) = (?!ml_collections\.ConfigDict)", line)
    if match:
      assigned.append((match.group(1), number))
  leaves = set()
  for kind in ("image", "graph"):
    base = config_check.base_config(kind)
    leaves |= {key for key in _keys(base)
               if not hasattr(functools.reduce(lambda node, part: node[part], key.split("."), base),
                              "keys")}
  assert {key for key, _ in assigned} == leaves   # every leaf is set by a line this test reads
  above = {n + 1 for n in commented if lines[n - 1].lstrip().startswith("#")}
  undocumented = [key for key, number in assigned
                  if number not in commented and number not in above]
  assert not undocumented, f"keys of configs/base.py without a comment: {undocumented}"


def test_the_schema_is_the_shipped_base_whatever_the_cwd(tmp_path, monkeypatch):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "base.py").write_text("raise RuntimeError('not the schema')\n")
  monkeypatch.chdir(tmp_path)
  assert config_check.load_and_validate("configs/digits.py").dataset == "digits"
