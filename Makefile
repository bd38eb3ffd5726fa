# Entry points on a fresh machine with Python 3.11 and pip:
#   make demo   set up .venv and run the default job (MAML on sinusoids, local Ray, sqlite MLflow)
#   make test   set up .venv and run the whole test suite
#   make gpu-kit  the wheels a GPU machine without network needs, in .gpukit/ (see bench/gpu/check.sh)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: demo test bench gpu-kit venv clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test,bench]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/metaorch train configs/sinusoid_maml.yaml

# Two pytest processes, a test file each at a time, the costliest files first (tests/conftest.py):
# much of the suite waits on processes starting (Ray, MLflow servers, CLI subprocesses) while
# the other file computes. The 15 slowest tests are listed at the end: where the time goes.
test: venv
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=15

bench: venv
	RAY_AUTH_MODE=disabled $(BIN)/python bench/maml_iteration.py
	RAY_AUTH_MODE=disabled $(BIN)/python bench/sinusoid_results.py
	RAY_AUTH_MODE=disabled $(BIN)/python bench/omniglot_iteration.py
	RAY_AUTH_MODE=disabled $(BIN)/python bench/omniglot_results.py
	RAY_AUTH_MODE=disabled $(BIN)/python bench/rollout_speed.py
	RAY_AUTH_MODE=disabled $(BIN)/python bench/scaling.py
	for r in bandit navigation-maml navigation-pearl half-cheetah; do RAY_AUTH_MODE=disabled $(BIN)/python bench/meta_rl_results.py $$r || exit 1; done

gpu-kit: venv
	$(BIN)/python bench/gpu/kit.py

clean:
	rm -rf $(VENV) checkpoints mlruns mlflow.db
