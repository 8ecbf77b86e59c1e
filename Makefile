# make run   - set up .venv and start coschedd on the example jobs (Ctrl-C stops it)
# make test  - set up .venv and run the test suite
# make bench - run the benchmarks (not part of the tests)
# make man   - regenerate the man pages in man/ (a test checks they are current)
# make completions - regenerate the bash and zsh completion scripts
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

# coschedctl -H is tested against a real sshd (tests/test_remote.py); install
# Debian's openssh-server if it is missing (those tests skip where this fails).
SSHD := /usr/sbin/sshd
$(SSHD):
	-command -v apt-get >/dev/null && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  openssh-server >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null; }; }

.PHONY: run test bench fuzz man completions
run: $(BIN)/coschedd
	$(BIN)/coschedd --config config/coschedd.toml

test: $(BIN)/coschedd $(SSHD)
	$(BIN)/python -m pytest -q -n 2

bench: $(BIN)/coschedd
	$(BIN)/python tests/bench/bench_coro.py

man: $(BIN)/coschedd
	$(BIN)/python -m cosched.manpages man

completions: $(BIN)/coschedd
	$(BIN)/register-python-argcomplete coschedctl > completions/coschedctl.bash
	$(BIN)/register-python-argcomplete --shell zsh coschedctl > completions/_coschedctl
FUZZ_EXAMPLES ?= 5000
FUZZ_TESTS := --timeout=0 tests/test_coro_lua.py tests/test_coro_model.py -k random_programs
fuzz: $(BIN)/coschedd
	COSCHED_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -p no:cacheprovider $(FUZZ_TESTS)
	COSCHED_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) COSCHED_PURE_PYTHON=1 \
		$(BIN)/python -m pytest -q -p no:cacheprovider $(FUZZ_TESTS)
