# TokenHub: `make run` starts the server, `make test` runs lint + the test suite. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help run test lint format vendor system-deps bench-writer bench-routing clean docs

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed  ## start TokenHub on :8080 (data in ./data; override with TOKENHUB_* variables)
	$(BIN)/tokenhub serve

lint: $(VENV)/.installed  ## ruff check + format check, hadolint on the Dockerfile, the docs site built strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/mkdocs build --strict --quiet --site-dir build/site-check

docs: $(VENV)/.installed  ## build the documentation site into site/ (strict: a broken link or a page missing from nav fails)
	$(BIN)/mkdocs build --strict --site-dir site

vendor:  ## re-copy the admin UI's pinned front-end libraries (package.json) into admin_ui/static/vendor/
	scripts/vendor-ui.sh

system-deps:  ## install the system packages the tests drive (Debian's chromium, promtool) when missing
	scripts/system-deps.sh

test: system-deps lint  ## lint, then the whole pytest suite
	$(BIN)/python -m pytest -q

format: $(VENV)/.installed  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: demo
demo: $(VENV)/.installed  ## TokenHub + five fake providers + traffic, no provider key needed (docs/demo.md; Ctrl-C stops)
	$(BIN)/python scripts/demo.py run

bench-writer: $(VENV)/.installed  ## benchmark: sustained request-log ingest into DuckDB (target >= 50,000 rows/s)
	$(BIN)/python scripts/bench_writer.py

bench-routing: $(VENV)/.installed  ## evaluation: routing policies over 25 seeded worlds (thompson+feedback >= 95% of oracle)
	$(BIN)/python scripts/bench_routing.py

.PHONY: bench-scale
bench-scale: $(VENV)/.installed  ## benchmark: throughput and added latency of N workers / replicas sharing Redis (POSTGRES_URL=, MAX_N=)
	$(BIN)/python scripts/bench_scale.py $(if $(MAX_N),--max-n $(MAX_N)) $(if $(POSTGRES_URL),--postgres-url $(POSTGRES_URL))

.PHONY: runtime-venv
runtime-venv: .venv-runtime/.installed  ## a venv with the runtime dependencies alone, as in the image (the benchmark's BENCH_PYTHON)

.venv-runtime/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/pip install -q --upgrade pip
	.venv-runtime/bin/pip install -q -e .
	touch $@

.PHONY: soak
soak: $(VENV)/.installed  ## soak: 30 min at half capacity, RSS/fds/tasks/p99 slopes (MINUTES=5 for a short run)
	$(BIN)/python scripts/soak.py --minutes $(or $(MINUTES),30)

clean:  ## remove the virtualenv and caches (keeps ./data)
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
