# Two entry points: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# torch goes first, pinned: anything that lets pip choose would pull a multi-GB CUDA build.
# [eval] (lm-eval, for tests/test_harness.py) then finds torch satisfied and leaves it alone.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,eval]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedsqueeze run examples/quickstart.toml --out runs/quickstart --overwrite
	$(BIN)/fedsqueeze report runs/quickstart --overwrite

# Lint and format check first: they take seconds, the suite minutes.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
