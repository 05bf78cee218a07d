# Two commands from a fresh clone:  `make demo`  and  `make test`.
# `make test` creates or refreshes .venv with the build install: torch 2.13.0 (these machines carry
# its CPU wheel on disk; elsewhere pass TORCH_INDEX=https://download.pytorch.org/whl/cpu, or the
# public index's default torch is a CUDA build) plus `.[build,dev,bulk]` (bulk: Ray Data, for the
# `defaker bulk` tests). torchvision and tensorrt are
# never installed here.
# `make demo` uses what a device installs: .venv-runtime with `pip install .` (no torch).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# the non-Python check (tests/test_node_runtime.py): onnxruntime-node from npm, CPU only (the
# install flag keeps its postinstall from fetching CUDA libraries from NuGet); skipped without npm
NPM := $(shell command -v npm 2>/dev/null)
ORT_NODE_VERSION ?= 1.31.1
ORT_NODE := .cache/npm/node_modules/onnxruntime-node/package.json
RT_VENV := .venv-runtime
RT_STAMP := $(RT_VENV)/.installed
# a non-editable install copies the sources: refresh it when any of them changes
RT_SOURCES := $(shell find defaker_edge -type f -not -name '*.pyc' 2>/dev/null)

.PHONY: setup node-ort demo test runtime-check test-slow default-model train bench clean lint

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[build,dev,bulk]"
	touch $(STAMP)

$(RT_STAMP): pyproject.toml Makefile $(RT_SOURCES)
	test -x $(RT_VENV)/bin/python || $(PY) -m venv $(RT_VENV)
	$(RT_VENV)/bin/python -m pip install -q --upgrade pip
	$(RT_VENV)/bin/python -m pip install -q .
	touch $(RT_STAMP)

setup: $(STAMP)

demo: $(RT_STAMP)
	DEMO_BIN=$(RT_VENV)/bin bash scripts/demo.sh

$(ORT_NODE):
	mkdir -p .cache/npm
	-npm install --prefix .cache/npm onnxruntime-node@$(ORT_NODE_VERSION) --onnxruntime-node-install=skip \
	  --no-audit --no-fund --loglevel=error || echo "onnxruntime-node not installed: its test will skip"

node-ort: $(if $(NPM),$(ORT_NODE))

test: $(STAMP) node-ort
	$(BIN)/python -m pytest -q

# the device install in a fresh venv (what .ci/run does after the tests)
runtime-check:
	bash scripts/runtime_only_check.sh

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

default-model: $(STAMP)
	bash scripts/default_model.sh

# One session of the default model's training program (resumes models/program; MINUTES=100)
train: $(STAMP)
	bash scripts/train_session.sh

# The committed benchmark (about an hour on an idle 2-core machine; the 2B teacher needs ~11 GB).
bench: $(STAMP)
	bash scripts/bench.sh

clean:
	rm -rf $(VENV) $(RT_VENV) .pytest_cache .hypothesis .cache/npm
