# Quick start: `make demo` (set up + run the main job) and `make test` (set up + run all tests);
# `make test-fast` leaves out the tests marked slow (the developer's loop).
# Both run WORKERS pytest-xdist workers (one torch thread each; WORKERS=0: one process, no xdist).
VENV ?= .venv
PY := $(VENV)/bin/python
WORKERS ?= 2
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadgroup)

.PHONY: setup demo test test-fast bench
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q $(XDIST)

test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow"

bench: setup
	$(PY) benchmarks/bench_truncation.py
