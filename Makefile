# The two commands: `make run` (whole pipeline on the embedded METR-LA week) and `make test`.
# Both create .venv and install on first use; later calls reuse it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
UI_PORT ?= 5000
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each gets an equal share of the cores for torch (tests/conftest.py).
TEST_WORKERS ?= 2

# Offline environment (STACK.md): no telemetry, local state inside the project.
export PATH := $(BIN):$(PATH)
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_ENABLED := true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns.db
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/site-cache
export GX_ANALYTICS_ENABLED := false

# pip's configured extra index folders that do not exist on a machine print one warning each.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

# `make run-all`: every default baseline instead of the demonstration's T-GCN alone.
ALL_BASELINES ?= gwn,stgcn,mtgnn,astgcn,tgcn

.PHONY: help install run run-all run-nyc lint test ui bench bench-accuracy bench-ablations gpu-deps

help:
	@echo "make run    - install (first time) and run the whole pipeline (dvc repro) on the embedded data"
	@echo "make run-all - the same with the five baselines gwn, stgcn, mtgnn, astgcn, tgcn (params.yaml edited by dvc exp run)"
	@echo "make run-nyc - the embedded NYC bike grid (demand, 6:2:2) with the eight demand-capable baselines (params only, dvc exp run)"
	@echo "make test   - install (first time), lint, and run the test suite"
	@echo "make lint   - ruff (lint + format check) and mypy (src/gptst); config in pyproject.toml"
	@echo "make ui     - MLflow UI on http://127.0.0.1:$(UI_PORT)"
	@echo "make bench  - benchmarks (data path memory, pre-training and finetuning speed, stage fixed cost, DTW cost, scale, memory estimates); tables on stdout"
	@echo "make gpu-deps - wheels for bench/gpu.sh on a GPU machine without a package registry (bench/gpu-deps/)"
	@echo "make bench-accuracy [QUICK=1] - the accuracy study of bench/accuracy.yaml (resumable; bench/results/accuracy.md)"
	@echo "make bench-ablations [QUICK=1] - ablations and robustness of bench/ablations.yaml (resumable; bench/results/ablations.md)"
	@echo "make server - Prefect server and UI on http://127.0.0.1:$(PREFECT_PORT)"
	@echo "make worker GPU=k - a Prefect worker for one GPU on the orchestration.work_pool pool"
	@echo "make deploy [CRON=...] [FORECAST_CRON=...] - the work pool and the deployments of prefect.yaml (retrain on orchestration.retrain_cron, forecast on orchestration.forecast_cron)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --progress-bar off -q -c constraints.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

install: $(STAMP)

# GPTST_PIPELINE_RUN: the MLflow tag `pipeline_run` shared by every run of this execution.
run: $(STAMP)
	GPTST_PIPELINE_RUN=$${GPTST_PIPELINE_RUN:-run-$$(date -u +%Y%m%dT%H%M%SZ)} dvc repro
	gptst outputs

# dvc exp run -S writes the list into params.yaml (git checkout params.yaml goes back to the demonstration).
run-all: $(STAMP)
	GPTST_PIPELINE_RUN=$${GPTST_PIPELINE_RUN:-run-all-$$(date -u +%Y%m%dT%H%M%SZ)} dvc exp run -S 'finetune.baselines=[$(ALL_BASELINES)]'
	gptst outputs

# The embedded NYC bike grid (demand) with the eight baselines that apply to demand data; params
# only (dvc exp run -S writes them into params.yaml; git checkout params.yaml goes back).
NYC_BASELINES ?= gwn,stgcn,mtgnn,astgcn,tgcn,ccrnn,dmvstnet,stmgcn
NYC_PARAMS = -S dataset.name=nycbike-grid -S dataset.kind=demand \
	-S dataset.series=data/raw/nycbike-grid/nycbike-grid.npz -S dataset.graph=data/raw/nycbike-grid/adj_mx.npz \
	-S 'dataset.channel_names=[inflow,outflow]' -S dataset.null_value=null -S 'dataset.split={train: 0.6, val: 0.2, test: 0.2}'
run-nyc: $(STAMP)
	GPTST_PIPELINE_RUN=$${GPTST_PIPELINE_RUN:-run-nyc-$$(date -u +%Y%m%dT%H%M%SZ)} dvc exp run $(NYC_PARAMS) -S 'finetune.baselines=[$(NYC_BASELINES)]'
	gptst outputs

lint: $(STAMP)
	ruff check src stages flows tests bench
	ruff format --check src stages flows tests bench
	mypy

test: lint
	pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

ui: $(STAMP)
	@echo "MLflow UI: http://127.0.0.1:$(UI_PORT)  (store: $(MLFLOW_TRACKING_URI))"
	@echo "runs of every baseline and variant, best test MAE first: $$(gptst ui-url --base-url http://127.0.0.1:$(UI_PORT))"
	mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --default-artifact-root "$(CURDIR)/mlartifacts" --host 127.0.0.1 --port $(UI_PORT)

bench: $(STAMP)
	python bench/ingest_memory.py
	python bench/pretrain_speed.py
	python bench/finetune_speed.py
	python bench/stage_overhead.py
	python bench/dtw_cost.py
	python bench/scale.py
	python bench/memory_estimate.py

# bench/gpu.sh on a GPU machine whose Python has torch, numpy, pandas, pyarrow, pyyaml and h5py but
# no package registry: the wheels of the other imports, for that machine's Python (GPU_PYTHON).
GPU_PYTHON ?= 3.12
GPU_WHEELS := pydantic pydantic-core annotated-types typing-inspection
gpu-deps: $(STAMP)
	rm -rf bench/gpu-deps && mkdir -p bench/gpu-deps/wheels
	python -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d bench/gpu-deps/wheels \
	  $$(python -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in '$(GPU_WHEELS)'.split()))")  2>&1 | $(QUIET_PIP)
	@ls bench/gpu-deps/wheels

# Resumable: a rerun continues where a killed one stopped. QUICK=1: one seed of Graph WaveNet.
bench-accuracy: $(STAMP)
	python bench/accuracy.py $(if $(QUICK),--quick)

# Ablations of GPT-ST (GWN downstream) and robustness to missing inputs; own 90-minute budget.
bench-ablations: $(STAMP)
	python bench/accuracy.py --protocol bench/ablations.yaml $(if $(QUICK),--quick)

# Orchestration (Prefect): a server on 127.0.0.1, one worker per GPU, the deployments of prefect.yaml.
#   make server                      Prefect API and UI on http://127.0.0.1:$(PREFECT_PORT)
#   make worker GPU=k                a worker of the work pool (orchestration.work_pool) that sees GPU k only
#   make deploy [CRON="0 3 * * 1"] [FORECAST_CRON="0 * * * *"]
#                                    work pool + deployments; the crons default to orchestration.retrain_cron
#                                    and orchestration.forecast_cron
PREFECT_PORT ?= 4200
GPU ?= 0
GPTST_WORKSPACE ?= $(CURDIR)

.PHONY: server worker deploy

worker deploy: export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api

server: $(STAMP)
	@echo "Prefect UI and API: http://127.0.0.1:$(PREFECT_PORT)  (state: $(PREFECT_HOME))"
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# One run at a time per worker (its GPU); flow runs execute in GPTST_WORKSPACE, this checkout by default.
worker: $(STAMP)
	CUDA_VISIBLE_DEVICES=$(GPU) GPTST_WORKSPACE=$(GPTST_WORKSPACE) prefect worker start \
	  --pool "$$(python -m flows.deploy --work-pool)" --type process --name "gpu-$(GPU)-$$(hostname)" --limit 1

deploy: $(STAMP)
	python -m flows.deploy $(if $(CRON),--cron "$(CRON)") $(if $(FORECAST_CRON),--forecast-cron "$(FORECAST_CRON)")
