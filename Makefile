# Quick start: `make run` (the quick experiment) and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXP ?= experiments/quick.yaml

.PHONY: venv run test test-slow test-all profile clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: venv
	$(BIN)/lesa-bench run $(EXP) --jobs 2 && $(BIN)/lesa-bench report $(EXP)

test: venv
	$(BIN)/python -m pytest

test-slow: venv
	$(BIN)/python -m pytest -m slow

test-all: venv
	$(BIN)/python -m pytest -m ''

profile: venv
	$(BIN)/lesa-bench profile

clean:
	rm -rf $(VENV) results/*/ .pytest_cache
