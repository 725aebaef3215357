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

.PHONY: setup reproduce test bench readme-images
setup: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/canary reproduce --profile organism

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2    # two worker processes, one torch thread each (tests/conftest.py)

bench: $(STAMP)
	$(BIN)/python benchmarks/reproduce_bench.py

# The README's pictures (docs/images/table1.png, figure2.png) from results/organism; reads the results only.
readme-images: $(STAMP)
	$(BIN)/canary readme-images --results results/organism --out docs/images
