# phpo — the two commands: `make demo` and `make test`. Both start from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of torch (for optuna.gp) comes from a local wheel where the machine has one.
WHEELS ?= /opt/wheels

.PHONY: install demo test lint bench clean

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

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
