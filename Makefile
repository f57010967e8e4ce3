# dbgate developer entry points. Every target installs what it needs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit integration bench compat lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py dbgate/wire/_scan.c dbgate/policy/_literals.c dbgate/pii/_rows.c \
		dbgate/pii/_blake2b.c dbgate/pii/_blake2b.h dbgate/pii/_issued.c dbgate/pii/_issued.h \
		dbgate/audit/_seal.c dbgate/_wbuf.h
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

DEMO_ARGS ?= --info-file demo.json

demo: install
	$(BIN)/dbgate demo $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest -q tests/unit

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

compat: install
	$(BIN)/python -m compat.run $(COMPAT_ARGS)

lint: install
	$(BIN)/ruff check dbgate tests bench compat
	$(BIN)/ruff format --check dbgate tests bench compat

clean:
	rm -rf $(VENV) .pytest_cache bench/.work compat/.work
