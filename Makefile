# Every target creates .venv on first use, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all cuda-check venv clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/medsemgan demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# CUDA compile check: a CUDA build of torch in its own venv (never mixed with the CPU .venv),
# then build the CUDA extension with the local nvcc, no GPU needed. See docs/ops.md.
CUDA_VENV := .venv-cuda
CUDA_STAMP := $(CUDA_VENV)/.installed-torch-2.14.1
CUDA_HOME ?= /usr/local/cuda
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0

$(CUDA_STAMP):
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q torch==2.14.1 ninja==1.13.2 numpy==2.4.6
	touch $(CUDA_STAMP)

cuda-check: $(CUDA_STAMP)
	CUDA_HOME="$(CUDA_HOME)" TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" $(CUDA_VENV)/bin/python cuda/check_build.py

clean:
	rm -rf $(VENV) .venv-cuda build *.egg-info
