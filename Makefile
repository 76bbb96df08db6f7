# Two entry points for a fresh clone: `make demo` and `make test` (see README.md).
# Both create .venv with the project and its dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORPUS ?= ../shared/corpus/ponymail

.PHONY: demo accuracy test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/threadline up

# make runs $(BIN)/threadline; the commands `up` and `demo` suggest are plain `threadline`, found
# once the venv is activated (up's hint says so itself: it keeps running).
accuracy: $(STAMP)
	$(BIN)/threadline demo $(CORPUS)
	@echo "(threadline is $(BIN)/threadline: '. $(BIN)/activate' puts it on PATH in this shell)"

# Real servers the integration tests start themselves (Dovecot IMAP): installed when missing if
# this user is root and has apt-get; never fails the run (the tests that need them skip instead).
# Two pytest processes, one a core of CI's two: most integration time is spent waiting for
# workers, brokers and servers. Each process has its own broker and chDB; --dist loadfile keeps a
# module's tests together, so a module-scoped `up` run or Dovecot is still started once, and
# --no-loadscope-reorder hands out files in collection order (tests/conftest.py puts the long
# integration files first) instead of those with the most tests first.
test: $(STAMP)
	-@bash .ci/install-test-services
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/threadline bench correlate

clean:
	rm -rf $(VENV) data bench-results .pytest_cache .hypothesis
