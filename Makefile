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

.PHONY: setup demo test lint docs docs-build format bench clean

$(BIN)/heart: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(BIN)/heart

setup: $(BIN)/heart ## create .venv with heart and its test tools

demo: setup ## train, evaluate, export and predict on the bundled sample (a few minutes)
	rm -rf runs/demo
	$(BIN)/heart train --config examples/quickstart.toml --name demo
	$(BIN)/heart evaluate runs/demo
	$(BIN)/heart export runs/demo --out runs/demo/export
	$(BIN)/heart predict runs/demo/export/model.onnx data/sample/random/test.parquet --out runs/demo/predictions.csv

lint: setup ## ruff (lint + format check) and mypy
	$(BIN)/ruff check heartcli tests benchmarks docs/hooks
	$(BIN)/ruff format --check heartcli tests benchmarks docs/hooks
	$(BIN)/mypy heartcli

docs: setup ## serve the documentation site at http://127.0.0.1:8000, rebuilt on every edit
	$(BIN)/mkdocs serve

docs-build: setup ## build the site as CI does: every warning (a broken link, a command without a page) fails
	$(BIN)/mkdocs build --strict --site-dir site

test: lint docs-build ## lint, types, the documentation site, then the whole test suite
	$(BIN)/pytest -q

format: setup
	$(BIN)/ruff format heartcli tests benchmarks docs/hooks
	$(BIN)/ruff check --fix heartcli tests benchmarks docs/hooks

# benchmarks that measure trained run folders given as arguments (see each script's usage)
RUN_BENCHES := benchmarks/bench_edge.py benchmarks/bench_int8_calibration.py benchmarks/bench_oof_weights.py

bench: setup ## the speed and memory benchmarks (figures in benchmarks/results/)
	for script in $(filter-out $(RUN_BENCHES),$(wildcard benchmarks/bench_*.py)); do \
		$(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs mlflow.db mlruns site .pytest_cache .mypy_cache .ruff_cache
