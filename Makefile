# heart: one place for setup, the demo, tests, lint, the documentation site and benchmarks.
#
# TORCH is the torch requirement installed before the project. The pinned release is a
# CPU wheel on the CI machines and the regular PyPI wheel elsewhere; on a GPU machine,
# override it, e.g. `make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu128"`.
TORCH ?= torch==2.13.0
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,ray,edge
# Every package `make setup` installs, at the version last tested (extras and pip,
# setuptools and wheel included): a pip constraints file, refreshed by `make lock`.
LOCK ?= requirements.lock

.PHONY: setup lock demo test check lint docs docs-build format bench clean

$(BIN)/heart: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) pip setuptools wheel
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH)
	$(BIN)/pip install --quiet -c $(LOCK) --no-build-isolation -e ".[$(EXTRAS)]"
	touch $(BIN)/heart

setup: $(BIN)/heart ## create .venv with heart and its test tools, at the locked versions

# The newest releases that pyproject.toml's ranges admit, installed into a throw-away venv
# and written down, every extra included. Upgrade: `make lock`, then `make test` (setup
# reinstalls, as the lock changed), and commit requirements.lock.
LOCK_VENV := .lock-venv
lock: ## refresh requirements.lock from pyproject.toml's ranges (the newest releases)
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip setuptools wheel
	$(LOCK_VENV)/bin/pip install --quiet $(TORCH)
	$(LOCK_VENV)/bin/pip install --quiet ".[dev,ray,edge]"
	{ echo "# pip constraints: every package \`make setup\` installs, written by \`make lock\`"; \
	  echo "# on $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version(), platform.machine())'),"\
	    "with $(TORCH) first. Do not edit by hand: change pyproject.toml, run make lock."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude heartcli | sed -E 's/\+[A-Za-z0-9.]+$$//'; \
	} > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)

demo: setup ## train, evaluate, export and predict on the bundled sample (a few minutes)
	rm -rf runs/demo runs/demo-predictions.csv
	$(BIN)/heart train --config examples/quickstart.toml --name demo
	$(BIN)/heart evaluate runs/demo
	$(BIN)/heart export runs/demo --out runs/demo/export
	$(BIN)/heart predict runs/demo/export/model.onnx data/sample/random/test.parquet --out runs/demo-predictions.csv

lint: setup ## ruff (lint + format check) and mypy
	$(BIN)/ruff check heartcli tests benchmarks docs/hooks
	$(BIN)/ruff format --check heartcli tests benchmarks docs/hooks
	$(BIN)/mypy heartcli

docs: setup ## serve the documentation site at http://127.0.0.1:8000, rebuilt on every edit
	$(BIN)/mkdocs serve

docs-build: setup ## build the site as CI does: every warning (a broken link, a command without a page) fails
	$(BIN)/mkdocs build --strict --site-dir site

# The whole suite on every CPU (pytest-xdist: one worker per logical CPU; the tests that start Ray
# share one worker, `--dist loadgroup`); PYTEST_WORKERS=0 runs it in this one process.
PYTEST_WORKERS ?= logical
test: lint docs-build ## lint, types, the documentation site, then the whole test suite
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=25

# The quick loop while changing code (about a minute on 2 cores): lint and format checks, then
# the unit tests (tests/unit) without the `slow` ones, stopping at the first failure. The
# CLI and system tests, and the slow ones, run in `make test`.
check: setup ## the quick loop: ruff, then tests/unit without the slow tests
	$(BIN)/ruff check heartcli tests benchmarks docs/hooks
	$(BIN)/ruff format --check heartcli tests benchmarks docs/hooks
	$(BIN)/pytest tests/unit -q -x -m "not slow"

format: setup
	$(BIN)/ruff format heartcli tests benchmarks docs/hooks
	$(BIN)/ruff check --fix heartcli tests benchmarks docs/hooks

# benchmarks that measure trained run folders given as arguments (see each script's usage)
RUN_BENCHES := benchmarks/bench_edge.py benchmarks/bench_int8_calibration.py benchmarks/bench_oof_weights.py

bench: setup ## the speed and memory benchmarks (figures in benchmarks/results/)
	for script in $(filter-out $(RUN_BENCHES),$(wildcard benchmarks/bench_*.py)); do \
		$(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(LOCK_VENV) runs mlflow.db mlruns site .pytest_cache .mypy_cache .ruff_cache
