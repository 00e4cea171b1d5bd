# `make train` / `make test` work on a fresh machine with Python 3.11 and
# nothing else. The virtual environment .venv is created if missing, then
# brought to the pinned files it needs, each install redone only when its
# file (or pyproject.toml) changed:
#   make train -> requirements.txt        (training only: no torch, no CUDA)
#   make test  -> + requirements-test.txt (torch, opencv, pytest, the GCS emulator)
#   make bench -> + benchmarks/requirements.txt
# Installs go through uv (pinned in requirements-test.txt, bootstrapped into
# the venv with pip: one wheel), about 5x faster than pip on a cold cache;
# `make INSTALLER=pip ...` uses pip alone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLER ?= uv
UV_PIN := $(shell grep -m1 '^uv==' requirements-test.txt)
WORKDIR ?= workdirs/digits
PYTEST_ARGS ?=

ifeq ($(INSTALLER),uv)
INSTALL = $(VENV)/bin/uv pip install --quiet --python $(PY)
BOOTSTRAP = $(VENV)/bin/uv
else
INSTALL = $(PY) -m pip install --quiet
BOOTSTRAP =
endif

.PHONY: venv test test-slow train bench clean

venv: $(VENV)/.installed-train

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/bin/uv: | $(PY)
	$(PY) -m pip install --quiet $(UV_PIN)

$(VENV)/.installed-train: requirements.txt pyproject.toml | $(PY) $(BOOTSTRAP)
	$(INSTALL) -r requirements.txt
	$(INSTALL) --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed-train
	$(INSTALL) -r requirements-test.txt
	@touch $@

$(VENV)/.installed-bench: benchmarks/requirements.txt $(VENV)/.installed-test
	$(INSTALL) -r benchmarks/requirements.txt
	@touch $@

# Subprocess-heavy tests share an xdist_group, so they run on one worker and
# don't oversubscribe the 2 cores; tests marked slow run in `make test-slow`.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -p no:xdist -m slow $(PYTEST_ARGS)

train: $(VENV)/.installed-train
	$(PY) -m hcl_jax.main --config configs/digits.py --workdir $(WORKDIR)

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/loss_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
