# `make test` / `make train` work on a fresh machine with Python 3.11: the
# virtual environment is (re)built from the pinned requirements whenever it is
# missing or requirements.txt / pyproject.toml changed since it was built.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdirs/digits
PYTEST_ARGS ?=

.PHONY: venv test test-slow train bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Subprocess-heavy tests share an xdist_group, so they run on one worker and
# don't oversubscribe the 2 cores; tests marked slow run in `make test-slow`.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:xdist -m slow $(PYTEST_ARGS)

train: $(STAMP)
	$(PY) -m hcl_jax.main --config configs/digits.py --workdir $(WORKDIR)

bench: $(STAMP)
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt
	$(PY) benchmarks/loss_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
