# Two commands from a fresh clone:  `make demo`  and  `make test`.
# Both create or refresh .venv first. torch is the CPU build (2.13.0) that these
# machines carry on disk; torchvision and tensorrt are never installed here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-slow default-model bench clean lint

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[build,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

default-model: $(STAMP)
	bash scripts/default_model.sh

# The committed benchmark (about an hour on an idle 2-core machine; the 2B teacher needs ~11 GB).
bench: $(STAMP)
	bash scripts/bench.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
