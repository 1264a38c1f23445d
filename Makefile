# The front door: `make repro` runs the pipeline, `make test` checks it. Both build .venv first.
# `make test-fast` is the edit loop: the tests not marked slow, without lint.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE ?= main
# Stage commands in dvc.yaml call `python`; this makes it the project's.
export PATH := $(CURDIR)/$(BIN):$(PATH)

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# `make sweep SPEC=sweeps/optimizers.yaml JOBS=2`: the spec to run, and experiments at a time.
SPEC ?= sweeps/learning_rate.yaml
JOBS ?= 1

.PHONY: help venv repro example examples report readme-results test test-fast lint format lock
.PHONY: hooks dag bench bench-pipeline bench-streaming sweep clean push pull gpu
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create .venv with the pinned dependencies

gpu: venv ## swap .venv's CPU build of TensorFlow for the CUDA one (Linux with NVIDIA GPUs)
	@version="$$($(BIN)/python -c 'import tensorflow as tf; print(tf.__version__)')" && \
	if $(BIN)/python -m pip show --quiet tensorflow-cpu >/dev/null 2>&1; then \
		$(BIN)/python -m pip uninstall --quiet --yes tensorflow-cpu; fi && \
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		"tensorflow[and-cuda]==$$version" && echo "TensorFlow $$version with CUDA in $(VENV)"

repro: venv ## check params.yaml, run the pipeline (dvc repro; only changed stages run), then readme-results
	$(BIN)/mlpipe params check
	$(BIN)/dvc repro
	$(BIN)/mlpipe readme-results

example: venv ## record example NAME as a DVC experiment (dvc exp run -n NAME -S ...)
	@test -f "examples/$(NAME).yaml" || { echo "usage: make example NAME=<name>; names:"; \
		$(MAKE) -s examples; exit 2; }
	args="$$($(BIN)/mlpipe preset-args examples/$(NAME).yaml)" && \
		eval "$(BIN)/dvc exp run -n $(NAME) $$args"

examples: ## list the example presets (examples/<name>.yaml) that `make example` runs
	@for f in examples/*.yaml; do \
		printf "  %-22s %s\n" "$$(basename $$f .yaml)" "$$(sed -n '1s/^# *//p' $$f)"; done

report: venv ## report.md: params, metrics and plots changed against BASE (default main)
	$(BIN)/mlpipe report --base $(BASE) --out report.md

readme-results: venv ## rewrite the README's results section from metrics/
	$(BIN)/mlpipe readme-results

test: venv lint ## lint, then run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -n auto --durations=15

test-fast: venv ## the tests not marked slow (no stage subprocesses, no long training)
	$(BIN)/python -m pytest -n auto -m "not slow"

lint: venv ## ruff lint and format check, import contracts (import-linter), types (mypy)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH=src $(BIN)/lint-imports
	$(BIN)/mypy

format: venv ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Pins every package, runtime and dev tools, for Linux x86_64 and Python 3.11 (what CI runs).
# Existing pins are kept; to move one: make lock LOCK_ARGS="--upgrade-package NAME".
lock: venv ## regenerate requirements.txt from pyproject.toml, keeping the current pins
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu --annotation-style line \
		--custom-compile-command "make lock" --quiet $(LOCK_ARGS) -o requirements.txt

hooks: venv ## run `make lint`'s checks on every git commit (pre-commit)
	$(BIN)/pre-commit install

bench: venv ## training throughput against Keras fit and scikit-learn (bench/results.md), under 10 min
	$(BIN)/python bench/bench.py

bench-pipeline: venv ## dvc repro of the default pipeline against one plain script (bench/results.md), under 10 min
	$(BIN)/python bench/bench.py --pipeline

bench-streaming: venv ## 20M rows in Parquet shards through every stage (bench/streaming.json), about 25 min
	$(BIN)/python bench/streaming.py

sweep: venv ## run SPEC as DVC experiments, JOBS at a time; rank them on validation
	$(BIN)/mlpipe sweep $(SPEC) -j $(JOBS) --readme README.md

# What to check when the DVC remote refuses a push or pull (see "Share results" in the README)
REMOTE_HINT := check the keys of the remote (dvc remote modify --local REMOTE access_key_id KEY, \
	the same for secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and its endpointurl

push: venv ## send the outputs of the last run to the DVC remote (dvc push)
	@$(BIN)/dvc push || { echo 'error: dvc push failed: $(REMOTE_HINT)' >&2; exit 2; }

pull: venv ## fetch the outputs dvc.lock names from the DVC remote (dvc pull): nothing to rerun
	@$(BIN)/dvc pull || { echo 'error: dvc pull failed: $(REMOTE_HINT)' >&2; exit 2; }

dag: venv ## print the stage graph
	$(BIN)/dvc dag

clean: ## remove .venv (DVC outputs stay; `dvc gc` prunes the cache)
	rm -rf $(VENV)
