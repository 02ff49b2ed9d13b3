# The two commands a newcomer needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TYPED  := callward

.PHONY: demo test lint typecheck pytest install system-deps proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the browser tests need; installed only when missing.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (headless browser tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; browser tests will be skipped"; }

demo: $(STAMP)
	$(BIN)/python -m callward.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy $(TYPED)

pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

proto: $(STAMP)
	$(BIN)/python proto/generate.py

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-data
