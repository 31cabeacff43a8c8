# The two commands of the README, and a few more. Each one sets up what it needs first (scripts/setup.sh).
VENV ?= .venv
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: demo test test-fast bench setup
demo:  ## the whole pipeline locally, full size: prep -> train (2 processes) -> infer
	bash scripts/setup.sh
	$(VENV)/bin/salesfc demo $(ARGS)

test:  ## every test, as CI runs them
	bash scripts/setup.sh --test
	$(VENV)/bin/python -m pytest $(ARGS)

test-fast:  ## the tests that need no PostgreSQL, chart tools, control plane or image build
	bash scripts/setup.sh
	$(VENV)/bin/python -m pytest -m "not postgres and not chart and not cluster and not image and not slow" $(ARGS)

bench:  ## the benchmarks (printed figures; see bench/README.md)
	bash scripts/setup.sh --test
	$(VENV)/bin/python bench/run_all.py $(ARGS)
