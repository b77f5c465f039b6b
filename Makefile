# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch is pinned here, not in pyproject.toml: a CPU wheel by default; GPU users
# pass their own build, e.g. make TORCH_SPEC="torch==2.13.0" PIP_EXTRA="--index-url ..."
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=
# extras of pyproject.toml: `cpu` (faiss-cpu, onnxruntime) or `gpu` (faiss-gpu-cu12,
# onnxruntime-gpu), never both: they install the same modules. GPU: make test EXTRAS=gpu,dev
EXTRAS ?= cpu,dev
BIN := $(VENV)/bin
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# switching EXTRAS in one venv first removes the other builds of faiss / onnxruntime
OTHER_BUILDS := $(if $(findstring gpu,$(EXTRAS)),faiss-cpu onnxruntime,faiss-gpu-cu12 onnxruntime-gpu)

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed*
	$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_BUILDS) 2>/dev/null || true
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) "$(TORCH_SPEC)" -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=offline $(BIN)/recsys demo

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/mypy recsys

# two pytest workers (pytest-xdist), a test file stays on one worker (module fixtures are built once).
# One BLAS / OpenMP thread per worker (and per command the tests start): two workers with a
# thread team each oversubscribe two cores (measured: test_train_seq's two slowest tests
# 21.4 s -> 13.0 s on a busy 2-core machine). Set TEST_THREADS to change it.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
TEST_THREADS ?= 1

test: $(STAMP) lint
	WANDB_MODE=offline OMP_NUM_THREADS=$(TEST_THREADS) OPENBLAS_NUM_THREADS=$(TEST_THREADS) \
	MKL_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache runs outputs multirun .pytest_cache
