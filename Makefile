# artsim: `make help` lists the targets. Everything runs from the project's own .venv.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PROFILE ?= smoke
# The CPU wheel on a CPU machine; a plain `torch` from PyPI would be a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
# The real CLIP tokenizer's BPE merges ship in this wheel; --no-deps because its dependencies would
# pull torchvision and a CUDA torch (artsim reads the file, never imports open_clip).
OPEN_CLIP := open-clip-torch==3.3.0
# pip's notices about unused local indexes are noise here; real errors still fail the step.
QUIET   := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: help install study dry-run report lint test test-fast test-slurm test-slurm-study test-rehearsal bench slurm-up slurm-down clean clean-runs

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=$(PROFILE) (smoke | full | path/to.yaml), SET='key=value ...', TORCH='$(TORCH)'"

install: $(STAMP) ## create .venv and install artsim with every dependency (CPU torch)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" $(QUIET)
	$(PY) -m pip install -q -e ".[dev]" $(QUIET)
	$(PY) -m pip install -q --no-deps "$(OPEN_CLIP)" $(QUIET)
	$(PY) -c "import torch, transformers, diffusers, snakemake; print('torch', torch.__version__)"
	$(PY) -c "from artsim_lib.models import bpe, backbones; bpe.clip_merges_path(); backbones.effnet_lite0_weights_path(); print('real CLIP tokenizer and EfficientNet-Lite0 weights: ok')"
	touch $(STAMP)

study: install ## run the whole study on PROFILE (default smoke) -> reports/<run dir name>/index.html (reports/PROFILE)
	$(VENV)/bin/artsim run --profile $(PROFILE) $(foreach s,$(SET),--set $(s))

dry-run: install ## validate the params and show the plan without running anything
	$(VENV)/bin/artsim run --profile $(PROFILE) $(foreach s,$(SET),--set $(s)) -n

report: install ## rebuild reports/PROFILE/index.html from what has run
	$(VENV)/bin/artsim report --profile $(PROFILE)

LINT_PATHS := artsim_lib tests benchmarks conftest.py notebooks

lint: install ## ruff: the lint rules and the formatting (pyproject.toml's [tool.ruff]); changes nothing
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test: install ## run every test, notebooks included (offline)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest --slow -n 2 --dist loadscope

test-fast: install ## the unit tests only (no notebooks, no workflow runs): what a plain `pytest` runs
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -n 2

test-slurm: install ## the cluster tests against a real single-node SLURM (root; see slurm-up)
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest --slow tests/test_slurm.py tests/test_workflow_sharding.py

test-slurm-study: install ## the real smoke study through SLURM, 03/05/08 sharded, vs a local run (~7 min)
	ARTSIM_SLURM_REAL_STUDY=1 HF_HUB_OFFLINE=1 $(VENV)/bin/pytest --slow tests/test_slurm.py -k matches_local

test-rehearsal: install ## the full profile's code paths (params/rehearsal.yaml) through a real SLURM vs a local run
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest --slow tests/test_rehearsal.py

bench: install ## print the performance figures (descriptor parallelism, siamese cache, CLIP throughput, issue 9's speed fixes)
	$(PY) benchmarks/bench_descriptors.py
	$(PY) benchmarks/bench_siamese.py
	$(PY) benchmarks/bench_speed.py

slurm-up: ## start a single-node SLURM on this machine (root; installs Debian's packages if missing)
	scripts/slurm/start-slurm.sh --install

slurm-down: ## stop what slurm-up started
	scripts/slurm/stop-slurm.sh

clean-runs: ## delete runs/ and reports/*/ (all generated data and executed notebooks)
	rm -rf runs reports/*/

clean: clean-runs ## also delete the virtual environment
	rm -rf $(VENV) *.egg-info
