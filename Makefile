# Quick start: `make demo` (set up + run the main job) and `make test` (set up + run all tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_truncation.py
