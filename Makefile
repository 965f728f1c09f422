# Two commands set up everything on a fresh Debian 12 machine: `make demo` and `make test`.
# Both install what is missing: Debian packages (as root), the virtualenv in .venv, the project.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := pcscd libpcsclite-dev swig vsmartcard-vpcd mosquitto socat gcc python3-dev python3-venv systemd iproute2 chromium chromium-driver

.PHONY: demo test bench lint debs clean mutation crashtest

demo: $(STAMP)
	$(BIN)/sscard demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy protocols reader/daemon
	$(BIN)/lint-imports
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

# The whole crash-point and fault matrix and 1,000 random SIGKILLs during taps (about an hour);
# one summary line, details in bench/results/crashtest.json. Not part of `make test`.
crashtest: $(STAMP)
	$(BIN)/python -m bench.crashtest

# Mutants of the money path (pyproject.toml [tool.mutmut]), then the score per module; the
# survivors and why each is equivalent: tests/mutation_survivors.md. Kept out of `make test`:
# the bench tests run once per mutant. MUTANTS narrows the run, e.g. MUTANTS='reader.daemon.policy*'.
mutation: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run --max-children $(or $(MUTATION_JOBS),2) $(MUTANTS)
	$(BIN)/python -m tests.mutation_score --list

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy protocols reader/daemon
	$(BIN)/lint-imports

debs:
	@missing=$$(for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "Missing Debian packages:" $$missing; \
	    echo "Run as root: apt-get update && apt-get install --no-install-recommends" $$missing; \
	    exit 1; \
	  fi; \
	  echo "Installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | debs
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis mutants
