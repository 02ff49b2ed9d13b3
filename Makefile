# The two commands a newcomer needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The demo needs the runtime dependencies only; the tests add the dev tools on top.
RUNTIME_STAMP := $(VENV)/.runtime-stamp
STAMP  := $(VENV)/.installed-stamp
TYPED  := callward

.PHONY: demo test lint typecheck pytest install system-deps proto bench stress mutate clean

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the end-to-end tests need; installed only when missing. Under CI
# (CI=true) a package that cannot be installed stops the run; locally its tests skip.
SYSTEM_PACKAGES := chromium
system-deps:
	@for pkg in $(SYSTEM_PACKAGES); do \
	  command -v $$pkg >/dev/null 2>&1 && continue; \
	  echo "installing $$pkg (Debian package the end-to-end tests need)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null) && continue; \
	  case "$${CI:-}" in \
	    1|true|TRUE|True|yes|on) echo "error: could not install $$pkg, which CI needs" >&2; exit 1;; \
	    *) echo "warning: could not install $$pkg; the tests that need it will be skipped";; \
	  esac; \
	done

# `make demo PORT=8600` when 8501 is taken; `make demo DEMO_ARGS=--no-dashboard` to skip it.
PORT ?= 8501
DEMO_ARGS ?=
demo: $(RUNTIME_STAMP)
	$(BIN)/python -m callward.demo --port $(PORT) $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy $(TYPED)

pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The files whose tests wait on threads, processes or the clock, run STRESS_COUNT times
# each while busy processes load every core. Not part of `make test` (about 15 minutes).
STRESS_COUNT ?= 3
STRESS_FILES := tests/collector/test_forward.py tests/collector/test_crash.py \
	tests/collector/test_spool.py tests/enforcer/test_reload.py tests/enforcer/test_server.py \
	tests/proxy/test_stdio.py tests/proxy/test_http.py tests/test_soak.py
stress: $(STAMP)
	$(BIN)/python -m tests.under_load -- $(BIN)/python -m pytest -q -p no:cacheprovider \
	  --count $(STRESS_COUNT) $(STRESS_FILES)

proto: $(STAMP)
	$(BIN)/python proto/generate.py

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Mutation testing (mutmut) of the engine, the limit rules, the conditions, the policy
# validator and the detectors' tool roles: one module at a time, one worker, the fast
# tests of [tool.mutmut] in pyproject.toml, Hypothesis's fixed `repro` profile. Not part
# of `make test`: it takes hours on a shared 2-core machine. `MUTATE_BUDGET` bounds each
# module (seconds); the table of killed / survived / timeout per module ends the output.
# BENCHMARKS.md ("Mutation testing (issue 13)") has the figures and the equivalent mutants.
MUTATE_BUDGET ?= 3600
mutate: $(STAMP)
	$(BIN)/python benchmarks/mutate.py run --budget $(MUTATE_BUDGET)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-data mutants
