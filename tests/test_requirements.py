"""The pinned install sets: `make train` gets training only, `make test` the rest.

requirements.txt is what `make train` (and a user's `pip install -r`)
installs: it must hold every direct need of pyproject.toml's `train` extra and
nothing that only tests or benchmarks use (torch and its CUDA libraries,
opencv, pytest), which made the first `make train` a 5.6 GB, 6-minute
install. requirements-test.txt adds the test extras on top of it.
"""

import pathlib
import re
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
# Test and benchmark extras: none of them may reach the training install.
TEST_ONLY = re.compile(r"^(torch|torchvision|triton|nvidia-|cuda-|opencv|pytest|"
                       r"fake-gcs|gcsfs|torch-geometric)", re.IGNORECASE)


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: pathlib.Path) -> tuple[dict[str, str], list[str]]:
  """{package: version} of a requirements file, and its `-r` includes."""
  pins, includes = {}, []
  for raw in path.read_text().splitlines():
    line = raw.split("#", 1)[0].strip()
    if not line:
      continue
    if line.startswith("-r "):
      includes.append(line[3:].strip())
      continue
    name, sep, version = line.partition("==")
    assert sep and version and re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+", name), (
        f"{path.name}: {raw!r} is not pinned as name==version")
    assert _norm(name) not in pins, f"{path.name}: {name} pinned twice"
    pins[_norm(name)] = version
  return pins, includes


def test_training_set_has_no_test_or_benchmark_extras():
  train, includes = _pins(REPO / "requirements.txt")
  assert not includes
  assert not [name for name in train if TEST_ONLY.match(name)]


def test_training_set_holds_every_direct_need_of_the_train_extra():
  train, _ = _pins(REPO / "requirements.txt")
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  needs = list(project["dependencies"]) + list(project["optional-dependencies"]["train"])
  names = [_norm(re.split(r"[<>=!~\[; ]", need, maxsplit=1)[0]) for need in needs]
  missing = [name for name in names if name not in train]
  assert not missing, missing


def test_test_set_builds_on_the_training_set_without_repinning_it():
  train, _ = _pins(REPO / "requirements.txt")
  test, includes = _pins(REPO / "requirements-test.txt")
  assert includes == ["requirements.txt"]
  assert not set(train) & set(test), sorted(set(train) & set(test))
  for needed in ("torch", "pytest", "pytest-xdist"):
    assert needed in test, needed
