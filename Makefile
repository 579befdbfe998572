# nmt: make install, make train, make test. Variables: CONFIG, PYTHON, MODEL, SRC, REF, TORCH, BENCH.
PYTHON ?= python3
CONFIG ?= configs/en-de.yaml
RUN_DIR ?= runs/en-de
MODEL ?= $(RUN_DIR)/best.safetensors
SRC ?= data/multi30k/test_2016_flickr.en.gz
REF ?= data/multi30k/test_2016_flickr.de.gz
BEAM ?= 5
# The CPU wheel these machines carry; elsewhere pip installs torch 2.13.0 from PyPI as usual.
TORCH ?= torch==2.13.0

.PHONY: install data train translate evaluate lint format test bench bench-speed clean

install:
	$(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[dev]"

data:
	$(PYTHON) -m nmt data

train:
	$(PYTHON) -m nmt train $(CONFIG) $(ARGS)

translate:
	$(PYTHON) -m nmt translate -m $(MODEL) --beam $(BEAM) $(if $(INPUT),-i $(INPUT)) $(if $(OUTPUT),-o $(OUTPUT))

evaluate:
	$(PYTHON) -m nmt evaluate -m $(MODEL) --beam $(BEAM) --src $(SRC) --ref $(REF)

# ruff, configured in pyproject.toml: lines of at most 110 characters, pyflakes, import order, ruff's format.
lint:
	$(PYTHON) -m ruff check nmt scripts tests
	$(PYTHON) -m ruff format --check nmt scripts tests

format:
	$(PYTHON) -m ruff check --fix nmt scripts tests
	$(PYTHON) -m ruff format nmt scripts tests

test:
	$(PYTHON) -m pytest -q tests

# Quality: train each direction's config (60 minutes each), score beam 5 on its test sets, write results/.
# BENCH=en-de (or several, space-separated) runs those directions only; ARGS=--reuse keeps finished runs
# and continues interrupted ones (Ctrl-C), so the benchmark can run in pieces.
BENCH ?=
bench:
	$(PYTHON) scripts/bench.py $(BENCH) $(ARGS)

# Speed of the model trained by `make train` (RUN_DIR): training tokens/s, whole-process translate, GEMM peak.
bench-speed:
	$(PYTHON) scripts/bench_speed.py --run-dir $(RUN_DIR) --out results

clean:
	rm -rf data/cache .pytest_cache
