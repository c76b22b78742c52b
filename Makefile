# Two entry points for a fresh machine with Python 3.10+ and pip: `make run`, `make test`.
# Both create .venv and install the project with the tested versions (constraints.txt) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test sweep bench lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)  ## the main job on the seed article's example
	$(BIN)/nn-parity run $(ARGS)

test: $(STAMP)  ## the parity suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/mypy

clean:
	rm -rf $(VENV) nn-parity-report* .pytest_cache .hypothesis
