# The two quick-start commands (README): `make unify` and `make test`. Both set up what they need.
.PHONY: setup unify test lint zoo
PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

unify: setup
	$(PY) jobs/unify.py $(ARGS)

zoo: setup
	$(PY) jobs/make_zoo.py $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
