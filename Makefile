# make run   - set up .venv and start coschedd on the example jobs (Ctrl-C stops it)
# make test  - set up .venv and run the test suite
# make bench - run the benchmarks (not part of the tests)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/coschedd: pyproject.toml setup.py cosched/_speedups.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

.PHONY: run test bench
run: $(BIN)/coschedd
	$(BIN)/coschedd --config config/coschedd.toml

test: $(BIN)/coschedd
	$(BIN)/python -m pytest -q

bench: $(BIN)/coschedd
	$(BIN)/python tests/bench/bench_coro.py
