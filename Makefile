# Two entry points for a fresh machine with Python 3.10+ and pip: `make run`, `make test`.
# Both create .venv and install the project with the tested versions (constraints.txt) first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test sweep mutants bench tolerances lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)  ## the main job on the seed article's example
	$(BIN)/nn-parity run $(ARGS)

# Over up to two xdist workers, one thread each (parity_tests/conftest.py pins the pools);
# loadfile keeps each test file on one worker, so module-scoped fixtures (test_reports.py's
# shared renders) are built once.
test: $(STAMP)  ## the parity suite
	$(BIN)/python -m pytest -n auto --maxprocesses 2 --dist loadfile $(PYTEST_ARGS)

sweep: $(STAMP)  ## 1,000 random configurations, no false alarm allowed, over both cores
	HYPOTHESIS_PROFILE=sweep $(BIN)/python -m pytest -m slow -n 2 -p no:cacheprovider \
		parity_tests/test_no_false_alarms.py

mutants: $(STAMP)  ## the mutation score: network, op and layered catalogues, the user-code ones, the causes
	$(BIN)/nn-parity mutants
	$(BIN)/python -m pytest -q -p no:cacheprovider parity_tests/test_user_styles.py \
		parity_tests/test_user_causes.py parity_tests/test_user_optimizer_state.py
	$(BIN)/python -m parity_tests.user_causes

bench: $(STAMP)  ## step-time ratios, scratch vs torch and lockstep vs both steps
	$(BIN)/python benchmarks/bench_step.py

tolerances: $(STAMP)  ## the measurements behind the tolerance table
	$(BIN)/python benchmarks/tolerance_survey.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/mypy

clean:
	rm -rf $(VENV) nn-parity-report* .pytest_cache .hypothesis
