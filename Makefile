# make run   - set up .venv and start coschedd on the example jobs (Ctrl-C stops it)
# make test  - set up .venv and run the test suite
# make bench - run the benchmarks (not part of the tests)
# make fuzz  - many more random coroutine programs against Lua 5.4 and the model, on both
#              switch paths (FUZZ_EXAMPLES programs per test and path)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/coschedd: pyproject.toml setup.py cosched/_speedups.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

.PHONY: run test bench fuzz
run: $(BIN)/coschedd
	$(BIN)/coschedd --config config/coschedd.toml

test: $(BIN)/coschedd
	$(BIN)/python -m pytest -q

bench: $(BIN)/coschedd
	$(BIN)/python tests/bench/bench_coro.py

FUZZ_EXAMPLES ?= 5000
FUZZ_TESTS := --timeout=0 tests/test_coro_lua.py tests/test_coro_model.py -k random_programs
fuzz: $(BIN)/coschedd
	COSCHED_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider $(FUZZ_TESTS)
	COSCHED_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) COSCHED_PURE_PYTHON=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider $(FUZZ_TESTS)
