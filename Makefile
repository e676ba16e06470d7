# phpo — the two commands: `make demo` and `make test`. Both start from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of torch (for optuna.gp) comes from a local wheel where the machine has one.
WHEELS ?= /opt/wheels

.PHONY: install demo test lint bench fuzz clean container-runtime chromium

$(BIN)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if ls $(WHEELS)/torch-2.13.0*.whl >/dev/null 2>&1; then \
	  $(BIN)/pip install -q --find-links $(WHEELS) torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[all,test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/phpo demo

# podman serves the Docker API here (CONTAINERS.md); the container tests use it when it can be
# installed and skip with a visible reason when it cannot.
container-runtime:
	@if ! (command -v podman && command -v runc && command -v busybox) >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq podman runc busybox-static >/dev/null) \
	  || echo "could not install podman: container tests will be skipped"; fi

# headless Chromium for the MLflow UI screenshot test (tests/mlflow); that test skips with a
# visible reason when it cannot be installed.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends chromium fonts-liberation >/dev/null) \
	  || echo "could not install chromium: the MLflow UI screenshot test will be skipped"; fi

# the tests wait on real processes much more than they compute: three workers (pytest-xdist),
# each test file on one worker so its servers are shared; PYTEST_WORKERS=0 runs them in one process
PYTEST_WORKERS ?= 3
test: install container-runtime chromium
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/run_all.py

# schemathesis over the whole API as a user, an agent and an admin, on SQLite and PostgreSQL
# (about 7 minutes; FUZZ_ARGS="--max-time 30 --db sqlite" for a short run); fails on any 5xx
fuzz: install
	$(BIN)/python tests/fuzz/runner.py $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
