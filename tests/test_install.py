"""The built wheel, installed into a clean venv with jax only, gives the losses.

`pip install hcl_jax` needs only jax and numpy: this builds the wheel from a
copy of the source tree (so no build/ or egg-info appears here), installs it
into a new virtual environment that has nothing else (its dependencies pinned
by requirements.txt), and there runs the three losses under jit, vmap and
grad, checking that no tensorflow, flax or optax module was imported. With uv
(in requirements.txt) the venv and the install take about a second once uv's
cache holds jax; pip is the fallback.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "flax", "optax", "orbax", "tensorflow_datasets", "sklearn", "ml_collections")

# The three losses under jit, grad and vmap, in one compilation.
LOSSES_SCRIPT = r"""
import jax, jax.numpy as jnp
from hcl_jax import losses


@jax.jit
def all_losses(z1, z2):
  out = {}
  for name, fn in (("hcl", losses.hcl_loss), ("dcl", losses.dcl_loss),
                   ("nt_xent", losses.nt_xent_loss)):
    value, grads = jax.value_and_grad(fn, argnums=(0, 1))(z1, z2)
    sweep = jax.vmap(lambda t: fn(z1, z2, temperature=t))(jnp.asarray([0.5, 1.0]))
    out[name] = (value, jnp.abs(grads[0]).sum(), sweep)
  return out


z1, z2 = jax.random.normal(jax.random.key(0), (2, 8, 4))
results = jax.tree.map(lambda x: x.tolist(), all_losses(z1, z2))
"""

CORE_SCRIPT = LOSSES_SCRIPT + r"""
import json, sys
import hcl_jax
print(json.dumps({"file": hcl_jax.__file__, "results": results,
                  "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _copy_source(dest: pathlib.Path) -> None:
  """The files git would ship (tracked and untracked-but-not-ignored)."""
  try:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
  except (OSError, subprocess.CalledProcessError):  # not a git checkout
    shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "workdirs", "data", "__pycache__"))
    return
  for name in filter(None, listed):
    source = REPO / name
    if source.is_file():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, dest / name)


def _installer():
  """(make venv, install into venv) commands: uv when installed, else venv + pip."""
  try:
    from uv import find_uv_bin
    uv = find_uv_bin()
  except (ImportError, FileNotFoundError):
    uv = None
  if uv:
    return (lambda venv: [uv, "venv", "-q", "--python", sys.executable, str(venv)],
            lambda py: [uv, "pip", "install", "-q", "--python", str(py)])
  return (lambda venv: [sys.executable, "-m", "venv", "--without-pip", str(venv)],
          lambda py: [sys.executable, "-m", "pip", "--python", str(py), "install", "-q"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
  _copy_source(source)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", str(source), "-w", str(out)], check=True, capture_output=True, cwd=source)
  (path,) = out.glob("hcl_jax-*.whl")
  return path


@pytest.mark.xdist_group("install")
def test_wheel_holds_every_module_and_the_configs(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  expected = {str(p.relative_to(REPO)) for p in (REPO / "hcl_jax").rglob("*.py")}
  expected |= {f"hcl_jax/configs/{p.name}" for p in (REPO / "configs").glob("*.py")}
  assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
  metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("METADATA"))
  core = [line for line in metadata.splitlines()
          if line.startswith("Requires-Dist:") and "extra ==" not in line]
  assert sorted(line.split()[1].split(">")[0].split("=")[0] for line in core) == ["jax", "numpy"]
  for extra in ("train", "tensorboard", "test", "bench"):
    assert f"Provides-Extra: {extra}" in metadata


@pytest.mark.xdist_group("install")
def test_core_install_runs_the_losses_without_heavy_imports(wheel, tmp_path):
  make_venv, install = _installer()
  venv = tmp_path / "venv"
  subprocess.run(make_venv(venv), check=True, capture_output=True)
  python = venv / "bin" / "python"
  done = subprocess.run([*install(python), "-c", str(REPO / "requirements.txt"), str(wheel)],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env["JAX_PLATFORMS"] = "cpu"
  ran = subprocess.run([str(python), "-c", CORE_SCRIPT], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
  assert ran.returncode == 0, ran.stderr[-2000:]
  out = json.loads(ran.stdout.splitlines()[-1])
  assert str(venv) in out["file"]  # the installed wheel, not this source tree
  imported_heavy = [m for m in HEAVY if m in out["modules"]]
  assert not imported_heavy, imported_heavy
  # The losses computed there are this source tree's (same code, same jax):
  # the install carried the real module, not a stale or partial one.
  namespace = {}
  exec(LOSSES_SCRIPT, namespace)
  for name, (value, grad_sum, sweep) in namespace["results"].items():
    got_value, got_grad_sum, got_sweep = out["results"][name]
    assert got_value == pytest.approx(value, rel=1e-5)
    assert got_grad_sum == pytest.approx(grad_sum, rel=1e-4)
    assert got_sweep == pytest.approx(sweep, rel=1e-5)
    assert got_sweep[0] == pytest.approx(got_value, rel=1e-6)  # t = 0.5 is the default
