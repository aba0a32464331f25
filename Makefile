# Two entry points: `make demo` and `make test`. Both create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# torch goes first, pinned: anything that lets pip choose would pull a multi-GB CUDA build.
# [eval] (lm-eval, for tests/test_harness.py) then finds torch satisfied and leaves it alone;
# [track] (tensorboard, wandb, mlflow-skinny) for tests/test_track.py.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,eval,track]"
	touch $(STAMP)

# A few minutes on 2 CPU cores (README "Quickstart"); then what other methods would send for the same adapter.
demo: $(STAMP)
	$(BIN)/fedsqueeze run examples/quickstart.toml --out runs/quickstart --overwrite
	$(BIN)/fedsqueeze report runs/quickstart --overwrite
	$(BIN)/fedsqueeze size examples/quickstart.toml

# Lint, format, layer contracts (import-linter, pyproject's [tool.importlinter]) and types (mypy,
# [tool.mypy]) first: they take seconds, the suite minutes.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
