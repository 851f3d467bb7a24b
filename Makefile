# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# pytest-xdist: two workers for the 2-core CI machine; idle tests steal from busy ones (the
# slowest tests run for minutes, so a fixed split would leave one worker idle at the end).
# PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= 2
PYTEST_XDIST   := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist worksteal)

.PHONY: demo test test-fast lint bench nodes install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24,<27"

$(STAMP): pyproject.toml | $(PY)
	@echo "==> installing kofo and its dev dependencies into $(VENV)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## demo: the KOFO network on embedded chains: kofo devnet + six kofo node processes, a routed trade
demo: $(STAMP)
	$(VENV)/bin/kofo demo

## nodes: build/install the pinned real nodes into .nodes/bin (geth, btcd, cometbft, litecoind, chromium)
nodes:
	bash scripts/install-nodes.sh

## test: dev dependencies + real nodes, then the whole suite (real-node tests included)
test: $(STAMP) nodes
	PATH="$(CURDIR)/.nodes/bin:$$PATH" $(PY) -m pytest $(PYTEST_XDIST) --durations=20

## test-fast: the suite without real nodes
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_XDIST) -m "not realnode"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench.gas
	$(PY) -m bench.btc_sizes
	$(PY) -m bench.swap
	$(PY) -m bench.exchange
	$(PY) -m bench.api
	$(PY) -m bench.trade
	PATH="$(CURDIR)/.nodes/bin:$$PATH" $(PY) -m bench.clearance

clean:
	rm -rf $(VENV) .nodes .pytest_cache .mypy_cache .ruff_cache
