# Everything a newcomer needs from a fresh machine with only python3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install test lint types pytest run docs bench soak clean

help:
	@echo "make run    - the example app on SQLite at http://127.0.0.1:5000"
	@echo "make test   - ruff, mypy --strict and the test suite"
	@echo "make docs   - the documentation site (warnings are errors)"
	@echo "make bench  - benchmarks against SQLAlchemy and Flask-SQLAlchemy"
	@echo "make soak   - the long fault tests (needs PostgreSQL and MariaDB)"

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs,bench]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint types pytest

run: $(STAMP)
	$(BIN)/python -m example_app

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.plugin_overhead

soak: $(STAMP)
	FUS_SOAK=1 $(BIN)/pytest -m reliability tests/reliability

clean:
	rm -rf $(VENV) docs/_build .mypy_cache .ruff_cache build *.egg-info
