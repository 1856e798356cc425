# Quick start: `make demo` (set up + run the main job) and `make test` (set up + run all tests);
# `make test-fast` leaves out the tests marked slow (the developer's loop).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast bench
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_truncation.py
