# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch is pinned here, not in pyproject.toml: a CPU wheel by default; GPU users
# pass their own build, e.g. make TORCH_SPEC="torch==2.13.0" PIP_EXTRA="--index-url ..."
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) "$(TORCH_SPEC)" -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=offline $(BIN)/recsys demo

lint: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP) lint
	WANDB_MODE=offline $(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache runs outputs multirun .pytest_cache
