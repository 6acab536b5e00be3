# petlab — run `make help` for the list of targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SAMPLE := data/sample-pets
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install sample demo train audit test test-slow test-all bench app lint format tensorboard clean

help: ## Show this list of targets
	@echo "Usage: make TARGET [ARGS='hydra overrides']"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install petlab with its dev tools and the app extra (once; again when pyproject changes)

sample: $(STAMP) ## Generate the synthetic sample dataset in data/sample-pets (if absent)
	$(BIN)/python -m petlab.data.sample --root $(SAMPLE) --if-missing

demo: sample ## Install, generate the sample, train ResNet34 on species (~2 min on 2 CPU cores)
	$(BIN)/python -m petlab experiment=demo $(ARGS)
	@echo "Watch it with: $(BIN)/tensorboard --logdir outputs"

train: $(STAMP) ## Train with Hydra overrides, e.g. make train ARGS="task=breed model=resnet50"
	$(BIN)/python -m petlab $(ARGS)

audit: $(STAMP) ## Audit a dataset (duplicates, leaks, label errors, outliers), e.g. make audit ARGS="data=sample"
	$(BIN)/python -m petlab.audit $(ARGS)

# A test process per core (at most 4); a file's tests run in one process, which builds its fixtures once.
PARALLEL := -n auto --maxprocesses 4 --dist loadfile

test: $(STAMP) ## Run the test suite but the slow end-to-end tests (~13 min on 2 cores), a process per core
	$(BIN)/python -m pytest $(PARALLEL) -m "not slow" $(ARGS)

test-slow: $(STAMP) ## Run the slow end-to-end tests: kills, sweeps, searches on SLURM and PostgreSQL (~14 min)
	$(BIN)/python -m pytest $(PARALLEL) -m slow $(ARGS)

test-all: $(STAMP) ## Run every test (what CI runs: make test, then make test-slow)
	$(BIN)/python -m pytest $(PARALLEL) $(ARGS)

bench: sample ## Data pipeline, training and (--task predict) prediction throughput, e.g. make bench ARGS="--root DIR --model cnn"
	$(BIN)/python -m petlab.bench $(ARGS)

app: $(STAMP) ## Serve the web page to try a model on 127.0.0.1:7860, e.g. make app ARGS="ckpt_path=outputs/runs/RUN/checkpoints/last.ckpt"
	$(BIN)/python -m petlab.app $(ARGS)

lint: $(STAMP) ## Check style with ruff
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples

format: $(STAMP) ## Reformat and fix what ruff can
	$(BIN)/ruff format src tests examples
	$(BIN)/ruff check --fix src tests examples

tensorboard: $(STAMP) ## Open TensorBoard on every run in outputs/
	$(BIN)/tensorboard --logdir outputs

clean: ## Remove caches and the generated sample (keeps .venv, outputs/ and real datasets)
	rm -rf .cache .pytest_cache .ruff_cache $(SAMPLE)
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
