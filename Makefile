# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[demo,test]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/graft demo

# The web page test drives Debian's chromium (headless); install it when missing (root, as on CI).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(VENV)/.test-installed browser
	$(BIN)/ruff check src tests bench
	cd src && ../$(BIN)/lint-imports --config ../pyproject.toml --no-cache
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test-installed
	$(BIN)/pip install --quiet -e ".[bench,lite]"
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/head.py

clean:
	rm -rf $(VENV) runs .pytest_cache build
