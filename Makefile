# `make test` and `make demo` each build their own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint soak bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,load]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check geviso tests loadtests examples
	$(BIN)/mypy geviso

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow" tests

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

bench: $(STAMP)
	$(BIN)/geviso bench

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
